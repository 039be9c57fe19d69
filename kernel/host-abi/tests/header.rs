//! `include/host_abi.h` (in `kernel/guest-abi`) and this crate describe the same ABI: the test
//! reads the header, generates a C program that prints every `#define` and enum value, every
//! interface identifier and the size and field offsets of every struct as the C compiler sees
//! them, compiles and runs it with the machine's C compiler (`$CC`, default `cc`), and compares
//! the result with the Rust definitions in both directions: a constant, field or struct on one
//! side only is a failure, as is any value, offset or size that differs.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use host_abi::*;

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-abi/include/host_abi.h")
}

/// What the header declares, by name (the values come from the C compiler).
#[derive(Default)]
struct Header {
    /// Object-like `#define`s with a value (function-like macros and the include guard excluded).
    defines: Vec<String>,
    /// Enumerators of `typedef enum`s.
    enumerators: Vec<String>,
    /// `static const IID` names.
    iids: Vec<String>,
    /// Struct tag → field names in declaration order.
    structs: BTreeMap<String, Vec<String>>,
}

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("unterminated comment") + start + 2;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

fn ident_after(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The field names of one struct body (`a; b, c; T (*f)(args);  uint8_t d[8];`).
fn fields(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut decl = String::new();
    for c in body.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == ';' && depth == 0 {
            let d = decl.trim().to_string();
            decl.clear();
            if let Some(p) = d.find("(*") {
                names.push(ident_after(&d[p + 2..]).to_string());
                continue;
            }
            for (i, part) in d.split(',').enumerate() {
                let part = part.split('[').next().unwrap().trim();
                let name = if i == 0 { part.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap() } else { part.trim_start_matches('*') };
                names.push(name.to_string());
            }
        } else {
            decl.push(c);
        }
    }
    names
}

fn parse(text: &str) -> Header {
    let text = strip_comments(text);
    let mut h = Header::default();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("#define ") {
            let name = ident_after(rest);
            let after = &rest[name.len()..];
            if !after.starts_with('(') && !after.trim().is_empty() {
                h.defines.push(name.to_string());
            }
        }
        if let Some(rest) = line.trim().strip_prefix("static const IID ") {
            h.iids.push(ident_after(rest).to_string());
        }
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("enum ") {
        let after = &rest[at + 5..];
        let (Some(open), Some(close)) = (after.find('{'), after.find('}')) else { break };
        if after[..open].contains(';') {
            rest = after;
            continue;
        }
        for item in after[open + 1..close].split(',') {
            h.enumerators.push(ident_after(item).to_string());
        }
        rest = &after[close..];
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("struct ") {
        let after = &rest[at + 7..];
        let tag = ident_after(after).to_string();
        let head = &after[tag.len()..];
        rest = head;
        if !head.trim_start().starts_with('{') {
            continue; // a use or a forward declaration
        }
        let open = head.find('{').unwrap();
        let mut depth = 0;
        let mut close = open;
        for (i, c) in head[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        h.structs.insert(tag, fields(&head[open + 1..close]));
        rest = &head[close..];
    }
    h
}

/// Compiles and runs a C program that prints what the C compiler makes of `h`, one
/// `key value` line each: `define NAME v`, `iid NAME b0 .. b15`, `size TAG n`, `offset TAG.FIELD n`.
fn c_view(h: &Header, include: &Path) -> BTreeMap<String, String> {
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"host_abi.h\"\nint main(void) {\n");
    for name in h.defines.iter().chain(&h.enumerators) {
        c += &format!("  printf(\"define {name} %lld\\n\", (long long)({name}));\n");
    }
    for name in &h.iids {
        c += &format!(
            "  {{ const unsigned char *b = (const unsigned char *)&{name}; printf(\"iid {name}\");\n    for (int i = 0; i < 16; i++) {{ printf(\" %u\", b[i]); }}\n    printf(\"\\n\"); }}\n"
        );
    }
    for (tag, fields) in &h.structs {
        c += &format!("  printf(\"size {tag} %zu\\n\", sizeof(struct {tag}));\n");
        for f in fields {
            c += &format!("  printf(\"offset {tag}.{f} %zu\\n\", offsetof(struct {tag}, {f}));\n");
        }
    }
    c += "  return 0;\n}\n";
    let dir = std::env::temp_dir().join(format!("host-abi-header-check-{}-{}", std::process::id(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-Wno-unused-const-variable", "-I"])
        .arg(include)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(out.status.success(), "compiling the header check failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).ok();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (kind, rest) = l.split_once(' ').unwrap();
            let (key, value) = rest.split_once(' ').unwrap();
            (format!("{kind} {key}"), value.to_string())
        })
        .collect()
}

/// A Rust struct's C tag, size and (C field name, offset) list. A field's C name is its Rust
/// name unless given (`rust_field = "CName"`); the comparison ignores case and underscores.
macro_rules! layout {
    ($tag:literal, $ty:ty, [$($field:ident $(= $cname:literal)?),* $(,)?]) => {
        ($tag, size_of::<$ty>(), vec![$(((layout!(@name $field $($cname)?)), offset_of!($ty, $field))),*])
    };
    (@name $field:ident $cname:literal) => { $cname };
    (@name $field:ident) => { stringify!($field) };
}

fn rust_view() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    for (name, value) in win32::CONSTANTS {
        v.insert(format!("define {name}"), value.to_string());
    }
    for (name, hr) in HResult::CONSTANTS {
        v.insert(format!("define {name}"), hr.0.to_string());
    }
    for &(name, level) in CriticalLevel::VALUES {
        v.insert(format!("define {name}"), (level as u32).to_string());
        assert_eq!(CriticalLevel::from_u32(level as u32), Some(level));
    }
    for &(name, band) in MemoryAvailable::VALUES {
        v.insert(format!("define {name}"), (band as u32).to_string());
        assert_eq!(MemoryAvailable::from_u32(band as u32), Some(band));
    }
    for (name, iid) in IIDS {
        let bytes: Vec<String> = iid.to_bytes().iter().map(|b| b.to_string()).collect();
        v.insert(format!("iid {name}"), bytes.join(" "));
    }
    let layouts = [
        layout!("_GUID", Guid, [data1, data2, data3, data4]),
        layout!("MEMORY_BASIC_INFORMATION", MemoryBasicInformation, [
            base_address, allocation_base, allocation_protect, partition_id, _padding1, region_size, state, protect,
            type_, _padding2
        ]),
        layout!("GUEST_CONTEXT", GuestContext, [
            rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags
        ]),
        layout!("GUEST_EXCEPTION", GuestException, [code, reserved, access, address, context]),
        layout!("HOST_COMMIT_INFO", HostCommitInfo, [
            commit_limit, committed, critical_reserve, low_threshold, high_threshold
        ]),
        layout!("HOST_SERVICES", HostServices, [
            cb_size, version, page_size, allocation_granularity, min_application_address, max_application_address,
            write, exit, ticks_ns, add_vectored_exception_handler, remove_vectored_exception_handler, get_write_watch,
            reset_write_watch, query_commit, cpu_count, reserved0, create_thread, exit_thread, wait_thread,
            close_thread, current_thread_id, yield_now = "yield", sleep_ns, wait_on_address, wake_by_address,
            set_thread_pointer, get_thread_pointer
        ]),
        layout!("IHostMemoryManagerVtbl", HostMemoryManagerVtbl, [
            query_interface, add_ref, release, create_malloc, virtual_alloc, virtual_free, virtual_query,
            virtual_protect, get_memory_load, register_memory_notification_callback, needs_virtual_address_space,
            acquired_virtual_address_space, released_virtual_address_space
        ]),
        layout!("IHostMemoryManager", HostMemoryManager, [vtbl = "lpVtbl"]),
        layout!("IHostMallocVtbl", HostMallocVtbl, [query_interface, add_ref, release, alloc, debug_alloc, free]),
        layout!("IHostMalloc", HostMallocObject, [vtbl = "lpVtbl"]),
        layout!("ICLRMemoryNotificationCallbackVtbl", MemoryNotificationCallbackVtbl, [
            query_interface, add_ref, release, on_memory_notification
        ]),
        layout!("ICLRMemoryNotificationCallback", MemoryNotificationCallback, [vtbl = "lpVtbl"]),
    ];
    for (tag, size, fields) in layouts {
        v.insert(format!("size {tag}"), size.to_string());
        for (field, offset) in fields {
            v.insert(format!("offset {tag}.{}", normalise(field)), offset.to_string());
        }
    }
    v
}

fn normalise(field: &str) -> String {
    field.chars().filter(|&c| c != '_').flat_map(char::to_lowercase).collect()
}

/// Compares the header `text` (compiled against `include`, which holds it as `host_abi.h`) with
/// the Rust definitions: one line per difference.
fn differences(text: &str, include: &Path) -> Vec<String> {
    let header = parse(text);
    let c: BTreeMap<String, String> = c_view(&header, include)
        .into_iter()
        .map(|(k, v)| match k.split_once('.') {
            Some((tag, field)) => (format!("{tag}.{}", normalise(field)), v),
            None => (k, v),
        })
        .collect();
    let rust = rust_view();
    let mut problems = Vec::new();
    for (key, value) in &c {
        match rust.get(key) {
            None => problems.push(format!("{key} = {value} in host_abi.h has no Rust twin in host-abi")),
            Some(r) if r != value => problems.push(format!("{key}: host_abi.h says {value}, host-abi says {r}")),
            Some(_) => {}
        }
    }
    for (key, value) in &rust {
        if !c.contains_key(key) {
            problems.push(format!("{key} = {value} in host-abi is missing from host_abi.h"));
        }
    }
    problems
}

#[test]
fn header_matches_the_rust_definitions() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let header = parse(&text);
    // The parser found what the header is known to contain (a parser that finds nothing would
    // make the comparison vacuous).
    assert!(header.defines.len() >= 60, "{} #defines", header.defines.len());
    assert_eq!(header.enumerators.len(), 6);
    assert_eq!(header.iids.len(), 4);
    assert_eq!(header.structs.len(), 12, "{:?}", header.structs.keys());
    assert_eq!(header.structs["HOST_SERVICES"].len(), 27);
    assert_eq!(header.structs["GUEST_CONTEXT"].len(), 18);
    let problems = differences(&text, header_path().parent().unwrap());
    assert!(problems.is_empty(), "host_abi.h and host-abi differ:\n  {}", problems.join("\n  "));
}

/// The check itself catches drift: a changed value, a moved field, a missing constant, a missing
/// field.
#[test]
fn the_check_sees_a_changed_header() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    for (from, to, key) in [
        ("#define MEM_COMMIT 0x1000u", "#define MEM_COMMIT 0x1001u", "define MEM_COMMIT"),
        ("    uint32_t version;\n    uint32_t page_size;", "    uint32_t page_size;\n    uint32_t version;", "offset HOST_SERVICES.version"),
        ("#define MEM_DECOMMIT 0x4000u\n", "", "define MEM_DECOMMIT"),
        ("    uint64_t high_threshold;\n", "", "offset HOST_COMMIT_INFO.highthreshold"),
    ] {
        assert!(text.contains(from), "{from:?} not in the header");
        let dir = std::env::temp_dir().join(format!("host-abi-drift-{}-{}", std::process::id(), key.replace(' ', "-")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("host_abi.h"), text.replace(from, to)).unwrap();
        let problems = differences(&text.replace(from, to), &dir);
        std::fs::remove_dir_all(&dir).ok();
        assert!(problems.iter().any(|p| p.starts_with(key)), "{key} drift went unseen: {problems:?}");
    }
}

/// Compiles `source` (named `file`) against the header with `compiler` and `args`; `None` when
/// the compiler is not installed, else the compiler's diagnostics on failure.
fn compile(compiler: &str, file: &str, source: &str, args: &[&str]) -> Option<Result<PathBuf, String>> {
    let dir = std::env::temp_dir().join(format!("host-abi-use-{}-{}", std::process::id(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(file);
    let obj = dir.join("out.o");
    std::fs::write(&src, source).unwrap();
    let out = match Command::new(compiler).args(args).arg("-I").arg(header_path().parent().unwrap()).arg("-c").arg("-o").arg(&obj).arg(&src).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running `{compiler}`: {e}"),
    };
    Some(if out.status.success() { Ok(obj) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) })
}

/// What a C++ guest writes: `guest_main` defined in C++ gets the header's C linkage (the unmangled
/// entry symbol), `DebugAlloc` takes `__FILE__`, and the header is warning-free under `-pedantic`.
#[test]
fn the_header_serves_a_cxx_guest() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let source = r#"#include "host_abi.h"
// HRESULT_FROM_WIN32 as winerror.h has it: a constant expression; 0 and HRESULTs pass through.
static_assert(HRESULT_FROM_WIN32(ERROR_NOACCESS) == (HRESULT)0x800703E6, "998");
static_assert(HRESULT_FROM_WIN32(0) == S_OK, "0");
static_assert(HRESULT_FROM_WIN32(E_FAIL) == E_FAIL, "an HRESULT passes through");
int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    IHostMalloc *heap = 0;
    void *p = 0;
    (void)services;
    if (host->lpVtbl->CreateMalloc(host, MALLOC_THREADSAFE, &heap) != S_OK) return 1;
    return heap->lpVtbl->DebugAlloc(heap, 16, eTaskCritical, __FILE__, __LINE__, &p) == S_OK ? 0 : 2;
}
"#;
    let Some(built) = compile(&cxx, "guest.cpp", source, &["-std=c++17", "-Wall", "-Wextra", "-pedantic", "-Werror"]) else {
        println!("no C++ compiler `{cxx}`: the C++ use of the header is not checked");
        return;
    };
    let obj = built.unwrap_or_else(|e| panic!("host_abi.h in C++:\n{e}"));
    let nm = Command::new("nm").arg("-P").arg(&obj).output().expect("nm (binutils, with the C compiler)");
    let symbols = String::from_utf8_lossy(&nm.stdout);
    assert!(symbols.lines().any(|l| l.starts_with("guest_main ")), "guest_main is not an unmangled symbol:\n{symbols}");
}

/// A guest that includes Windows-style (or CoreCLR PAL-style) definitions first keeps them: with
/// `VMK_NO_WIN32_TYPES` the header defines none of the Windows types, and its guarded `#define`s
/// leave the other header's in place, without a warning, in C and in C++.
#[test]
fn the_header_after_windows_style_definitions() {
    let prelude = r#"typedef int HRESULT;
#define _HRESULT_DEFINED
typedef unsigned int DWORD;
typedef unsigned int ULONG;
typedef unsigned long SIZE_T;
typedef void *LPVOID;
typedef struct _GUID { unsigned int Data1; unsigned short Data2, Data3; unsigned char Data4[8]; } GUID;
#define GUID_DEFINED
typedef GUID IID;
#define __IID_DEFINED__
#ifdef __cplusplus
#define REFIID const IID &
#else
#define REFIID const IID *
#endif
static const IID IID_IUnknown = {0, 0, 0, {0xC0, 0, 0, 0, 0, 0, 0, 0x46}};
typedef struct _MEMORY_BASIC_INFORMATION { void *BaseAddress; void *AllocationBase; DWORD AllocationProtect;
    unsigned short PartitionId; SIZE_T RegionSize; DWORD State; DWORD Protect; DWORD Type; } MEMORY_BASIC_INFORMATION;
#define S_OK ((HRESULT)0L)
#define E_OUTOFMEMORY ((HRESULT)0x8007000EL)
#define MEM_COMMIT 0x1000
#define PAGE_READWRITE 0x04
#define VMK_NO_WIN32_TYPES
#include "host_abi.h"
int use(IHostMemoryManager *host) {
    void *p = 0;
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    (void)&IID_IUnknown;
    if (host->lpVtbl->VirtualAlloc(host, 0, 4096, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &p) != S_OK) return 1;
    return host->lpVtbl->VirtualQuery(host, p, &m, sizeof m, &got) == S_OK && sizeof(GUID) == 16 ? 0 : 2;
}
"#;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = compile(&cc, "guest.c", prelude, &["-std=c11", "-Wall", "-Wextra", "-Werror"]).expect("the C compiler");
    assert!(built.is_ok(), "host_abi.h after Windows-style definitions, in C:\n{}", built.unwrap_err());
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match compile(&cxx, "guest.cpp", prelude, &["-std=c++17", "-Wall", "-Wextra", "-Werror"]) {
        None => println!("no C++ compiler `{cxx}`: the C++ case is not checked"),
        Some(built) => assert!(built.is_ok(), "host_abi.h after Windows-style definitions, in C++:\n{}", built.unwrap_err()),
    }
}
