/*
 * host_abi.h: the binary contract between this kernel and the guests it hosts
 * (IHostMemoryManager, IHostMalloc, ICLRMemoryNotificationCallback, HOST_SERVICES, exceptions).
 * Source of truth: shared/spec/host-abi.md. Usable from C (C99) and C++.
 *
 * A guest is a static executable (ET_EXEC, or static PIE with only R_X86_64_RELATIVE relocations):
 *
 *     gcc -ffreestanding -nostdlib -static-pie -fno-stack-protector -e guest_main -o my.elf my.c
 *
 * Its entry point is called as
 *     int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services);
 * and its return value is the exit code. All calls use the System V AMD64 convention.
 */
#ifndef VMK_HOST_ABI_H
#define VMK_HOST_ABI_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The Windows types this contract uses. A guest that brings its own (a Windows-style or PAL
 * header included first) defines VMK_NO_WIN32_TYPES and keeps those, which must have the same
 * sizes (HRESULT and DWORD 32 bits, SIZE_T 64, MEMORY_BASIC_INFORMATION 48 bytes); the guards
 * below (Windows' own) skip what such a header already defined. Every #define is guarded too, so
 * one that another header made first stays (with the same value). */
#ifndef VMK_NO_WIN32_TYPES
#ifndef _HRESULT_DEFINED
#define _HRESULT_DEFINED
typedef int32_t HRESULT;
#endif
typedef uint32_t DWORD;
typedef uint32_t ULONG;
typedef uint64_t SIZE_T;
typedef void *LPVOID;

#ifndef GUID_DEFINED
#define GUID_DEFINED
typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID;
#endif
#ifndef __IID_DEFINED__
#define __IID_DEFINED__
typedef GUID IID;
#endif
#ifndef REFIID
typedef const IID *REFIID;
#endif
#endif /* VMK_NO_WIN32_TYPES */

/* Results (host-abi §4). */
#ifndef S_OK
#define S_OK ((HRESULT)0)
#endif
#ifndef E_OUTOFMEMORY
#define E_OUTOFMEMORY ((HRESULT)0x8007000E)
#endif
#ifndef E_INVALIDARG
#define E_INVALIDARG ((HRESULT)0x80070057)
#endif
#ifndef E_POINTER
#define E_POINTER ((HRESULT)0x80004003)
#endif
#ifndef E_NOINTERFACE
#define E_NOINTERFACE ((HRESULT)0x80004002)
#endif
#ifndef E_NOTIMPL
#define E_NOTIMPL ((HRESULT)0x80004001)
#endif
#ifndef E_FAIL
#define E_FAIL ((HRESULT)0x80004005)
#endif
#ifndef HOST_E_CLRNOTAVAILABLE
#define HOST_E_CLRNOTAVAILABLE ((HRESULT)0x80131023)
#endif
#ifndef HOST_E_TIMEOUT
#define HOST_E_TIMEOUT ((HRESULT)0x80131024)
#endif
#ifndef HOST_E_NOT_OWNER
#define HOST_E_NOT_OWNER ((HRESULT)0x80131025)
#endif
#ifndef HOST_E_ABANDONED
#define HOST_E_ABANDONED ((HRESULT)0x80131026)
#endif
#ifndef HRESULT_FROM_WIN32
/* As winerror.h: 0 and HRESULTs (already negative) pass through. */
#define HRESULT_FROM_WIN32(e) ((HRESULT)(e) <= 0 ? (HRESULT)(e) : (HRESULT)(0x80070000u | ((uint32_t)(e)&0xFFFFu)))
#endif
#ifndef SUCCEEDED
#define SUCCEEDED(hr) ((HRESULT)(hr) >= 0)
#endif
#ifndef FAILED
#define FAILED(hr) ((HRESULT)(hr) < 0)
#endif

/* Win32 errors. */
#ifndef ERROR_ACCESS_DENIED
#define ERROR_ACCESS_DENIED 5u
#endif
#ifndef ERROR_NOT_ENOUGH_MEMORY
#define ERROR_NOT_ENOUGH_MEMORY 8u
#endif
#ifndef ERROR_BAD_LENGTH
#define ERROR_BAD_LENGTH 24u
#endif
#ifndef ERROR_INVALID_HANDLE
#define ERROR_INVALID_HANDLE 6u
#endif
#ifndef ERROR_INVALID_PARAMETER
#define ERROR_INVALID_PARAMETER 87u
#endif
#ifndef ERROR_INVALID_ADDRESS
#define ERROR_INVALID_ADDRESS 487u
#endif
#ifndef ERROR_NOACCESS
#define ERROR_NOACCESS 998u
#endif
#ifndef ERROR_PRIVILEGE_NOT_HELD
#define ERROR_PRIVILEGE_NOT_HELD 1314u
#endif
#ifndef ERROR_COMMITMENT_LIMIT
#define ERROR_COMMITMENT_LIMIT 1455u
#endif
#ifndef ERROR_TIMEOUT
#define ERROR_TIMEOUT 0x5B4u
#endif
#ifndef WAIT_TIMEOUT
#define WAIT_TIMEOUT 0x102u
#endif

/* Allocation types, states and kinds (win32-semantics §1.3). */
#ifndef MEM_COMMIT
#define MEM_COMMIT 0x1000u
#endif
#ifndef MEM_RESERVE
#define MEM_RESERVE 0x2000u
#endif
#ifndef MEM_DECOMMIT
#define MEM_DECOMMIT 0x4000u
#endif
#ifndef MEM_RELEASE
#define MEM_RELEASE 0x8000u
#endif
#ifndef MEM_FREE
#define MEM_FREE 0x10000u
#endif
#ifndef MEM_PRIVATE
#define MEM_PRIVATE 0x20000u
#endif
#ifndef MEM_MAPPED
#define MEM_MAPPED 0x40000u
#endif
#ifndef MEM_RESET
#define MEM_RESET 0x80000u
#endif
#ifndef MEM_TOP_DOWN
#define MEM_TOP_DOWN 0x100000u
#endif
#ifndef MEM_WRITE_WATCH
#define MEM_WRITE_WATCH 0x200000u
#endif
#ifndef MEM_PHYSICAL
#define MEM_PHYSICAL 0x400000u
#endif
#ifndef MEM_RESET_UNDO
#define MEM_RESET_UNDO 0x1000000u
#endif
#ifndef MEM_IMAGE
#define MEM_IMAGE 0x1000000u
#endif
#ifndef MEM_LARGE_PAGES
#define MEM_LARGE_PAGES 0x20000000u
#endif
#ifndef AT_ROUND_TO_PAGE
#define AT_ROUND_TO_PAGE 0x40000000u /* not a valid VirtualAlloc flag */
#endif

/* Protections. */
#ifndef PAGE_NOACCESS
#define PAGE_NOACCESS 0x01u
#endif
#ifndef PAGE_READONLY
#define PAGE_READONLY 0x02u
#endif
#ifndef PAGE_READWRITE
#define PAGE_READWRITE 0x04u
#endif
#ifndef PAGE_WRITECOPY
#define PAGE_WRITECOPY 0x08u
#endif
#ifndef PAGE_EXECUTE
#define PAGE_EXECUTE 0x10u
#endif
#ifndef PAGE_EXECUTE_READ
#define PAGE_EXECUTE_READ 0x20u
#endif
#ifndef PAGE_EXECUTE_READWRITE
#define PAGE_EXECUTE_READWRITE 0x40u
#endif
#ifndef PAGE_EXECUTE_WRITECOPY
#define PAGE_EXECUTE_WRITECOPY 0x80u
#endif
#ifndef PAGE_GUARD
#define PAGE_GUARD 0x100u
#endif
#ifndef PAGE_NOCACHE
#define PAGE_NOCACHE 0x200u
#endif
#ifndef PAGE_WRITECOMBINE
#define PAGE_WRITECOMBINE 0x400u
#endif

#ifndef WRITE_WATCH_FLAG_RESET
#define WRITE_WATCH_FLAG_RESET 0x1u
#endif

/* EMemoryCriticalLevel, EMemoryAvailable, MALLOC_TYPE (32-bit enums). */
typedef enum EMemoryCriticalLevel {
    eTaskCritical = 0,
    eAppDomainCritical = 1,
    eProcessCritical = 2
} EMemoryCriticalLevel;
typedef enum EMemoryAvailable {
    eMemoryAvailableLow = 1,
    eMemoryAvailableNeutral = 2,
    eMemoryAvailableHigh = 3
} EMemoryAvailable;
#ifndef MALLOC_THREADSAFE
#define MALLOC_THREADSAFE 0x1u
#endif
#ifndef MALLOC_EXECUTABLE
#define MALLOC_EXECUTABLE 0x2u
#endif

/* MEMORY_BASIC_INFORMATION (48 bytes). */
#ifndef VMK_NO_WIN32_TYPES
typedef struct MEMORY_BASIC_INFORMATION {
    uint64_t BaseAddress;
    uint64_t AllocationBase;
    uint32_t AllocationProtect;
    uint16_t PartitionId;
    uint16_t _padding1;
    uint64_t RegionSize;
    uint32_t State;
    uint32_t Protect;
    uint32_t Type;
    uint32_t _padding2;
} MEMORY_BASIC_INFORMATION;
#endif

/* Interface identifiers. */
#ifndef VMK_NO_WIN32_TYPES
static const IID IID_IUnknown = {0x00000000, 0x0000, 0x0000, {0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46}};
#endif
static const IID IID_IHostMemoryManager = {0x7BC698D1, 0xF9E3, 0x4460, {0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25}};
static const IID IID_IHostMalloc = {0x1831991C, 0xCC53, 0x4A31, {0xB2, 0x18, 0x04, 0xE9, 0x10, 0x44, 0x64, 0x79}};
static const IID IID_ICLRMemoryNotificationCallback = {0x47EB8E57, 0x0846, 0x4546, {0xAF, 0x76, 0x6F, 0x42, 0xFC, 0xFC, 0x26, 0x49}};

typedef struct IHostMemoryManager IHostMemoryManager;
typedef struct IHostMalloc IHostMalloc;
typedef struct ICLRMemoryNotificationCallback ICLRMemoryNotificationCallback;

/* Vtables: the order is the ABI (host-abi §3). */
typedef struct IHostMemoryManagerVtbl {
    HRESULT (*QueryInterface)(IHostMemoryManager *This, REFIID riid, void **ppv);
    ULONG (*AddRef)(IHostMemoryManager *This);
    ULONG (*Release)(IHostMemoryManager *This);
    HRESULT (*CreateMalloc)(IHostMemoryManager *This, DWORD dwMallocType, IHostMalloc **ppMalloc);
    HRESULT (*VirtualAlloc)(IHostMemoryManager *This, void *pAddress, SIZE_T dwSize, DWORD flAllocationType,
                            DWORD flProtect, EMemoryCriticalLevel eCriticalLevel, void **ppMem);
    HRESULT (*VirtualFree)(IHostMemoryManager *This, LPVOID lpAddress, SIZE_T dwSize, DWORD dwFreeType);
    HRESULT (*VirtualQuery)(IHostMemoryManager *This, void *lpAddress, void *lpBuffer, SIZE_T dwLength, SIZE_T *pResult);
    HRESULT (*VirtualProtect)(IHostMemoryManager *This, void *lpAddress, SIZE_T dwSize, DWORD flNewProtect,
                              DWORD *pflOldProtect);
    HRESULT (*GetMemoryLoad)(IHostMemoryManager *This, DWORD *pMemoryLoad, SIZE_T *pAvailableBytes);
    HRESULT (*RegisterMemoryNotificationCallback)(IHostMemoryManager *This, ICLRMemoryNotificationCallback *pCallback);
    HRESULT (*NeedsVirtualAddressSpace)(IHostMemoryManager *This, LPVOID startAddress, SIZE_T size);
    HRESULT (*AcquiredVirtualAddressSpace)(IHostMemoryManager *This, LPVOID startAddress, SIZE_T size);
    HRESULT (*ReleasedVirtualAddressSpace)(IHostMemoryManager *This, LPVOID startAddress);
} IHostMemoryManagerVtbl;

struct IHostMemoryManager {
    const IHostMemoryManagerVtbl *lpVtbl;
};

typedef struct IHostMallocVtbl {
    HRESULT (*QueryInterface)(IHostMalloc *This, REFIID riid, void **ppv);
    ULONG (*AddRef)(IHostMalloc *This);
    ULONG (*Release)(IHostMalloc *This);
    HRESULT (*Alloc)(IHostMalloc *This, SIZE_T cbSize, EMemoryCriticalLevel eCriticalLevel, void **ppMem);
    /* `pszFileName` is only read: const, so that __FILE__ passes in C++ (the same ABI as the
     * contract's `char *`). */
    HRESULT (*DebugAlloc)(IHostMalloc *This, SIZE_T cbSize, EMemoryCriticalLevel eCriticalLevel, const char *pszFileName,
                          int iLineNo, void **ppMem);
    HRESULT (*Free)(IHostMalloc *This, void *pMem);
} IHostMallocVtbl;

struct IHostMalloc {
    const IHostMallocVtbl *lpVtbl;
};

/* Implemented by the guest. */
typedef struct ICLRMemoryNotificationCallbackVtbl {
    HRESULT (*QueryInterface)(ICLRMemoryNotificationCallback *This, REFIID riid, void **ppv);
    ULONG (*AddRef)(ICLRMemoryNotificationCallback *This);
    ULONG (*Release)(ICLRMemoryNotificationCallback *This);
    HRESULT (*OnMemoryNotification)(ICLRMemoryNotificationCallback *This, EMemoryAvailable eMemoryAvailable);
} ICLRMemoryNotificationCallbackVtbl;

struct ICLRMemoryNotificationCallback {
    const ICLRMemoryNotificationCallbackVtbl *lpVtbl;
};

/* Exceptions (host-abi §8). */
typedef struct GUEST_CONTEXT {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags;
} GUEST_CONTEXT;

typedef struct GUEST_EXCEPTION {
    uint32_t code;
    uint32_t reserved;
    uint64_t access;  /* 0 read, 1 write, 8 execute */
    uint64_t address;
    GUEST_CONTEXT *context;
} GUEST_EXCEPTION;

#ifndef STATUS_ACCESS_VIOLATION
#define STATUS_ACCESS_VIOLATION 0xC0000005u
#endif
#ifndef STATUS_GUARD_PAGE_VIOLATION
#define STATUS_GUARD_PAGE_VIOLATION 0x80000001u
#endif
#ifndef STATUS_DATATYPE_MISALIGNMENT
#define STATUS_DATATYPE_MISALIGNMENT 0x80000002u
#endif
#ifndef STATUS_BREAKPOINT
#define STATUS_BREAKPOINT 0x80000003u
#endif
#ifndef STATUS_SINGLE_STEP
#define STATUS_SINGLE_STEP 0x80000004u
#endif
#ifndef STATUS_STACK_OVERFLOW
#define STATUS_STACK_OVERFLOW 0xC00000FDu
#endif
#ifndef STATUS_ILLEGAL_INSTRUCTION
#define STATUS_ILLEGAL_INSTRUCTION 0xC000001Du
#endif
#ifndef STATUS_PRIVILEGED_INSTRUCTION
#define STATUS_PRIVILEGED_INSTRUCTION 0xC0000096u
#endif
#ifndef STATUS_INTEGER_DIVIDE_BY_ZERO
#define STATUS_INTEGER_DIVIDE_BY_ZERO 0xC0000094u
#endif
#ifndef STATUS_INTEGER_OVERFLOW
#define STATUS_INTEGER_OVERFLOW 0xC0000095u
#endif
/* Unmasked x87 and SSE floating-point exceptions (host-abi §10.1; access 0, address = rip). */
#ifndef STATUS_FLOAT_DIVIDE_BY_ZERO
#define STATUS_FLOAT_DIVIDE_BY_ZERO 0xC000008Eu
#endif
#ifndef STATUS_FLOAT_INVALID_OPERATION
#define STATUS_FLOAT_INVALID_OPERATION 0xC0000090u
#endif
#ifndef STATUS_FLOAT_OVERFLOW
#define STATUS_FLOAT_OVERFLOW 0xC0000091u
#endif
#ifndef STATUS_FLOAT_UNDERFLOW
#define STATUS_FLOAT_UNDERFLOW 0xC0000093u
#endif
#ifndef STATUS_FLOAT_INEXACT_RESULT
#define STATUS_FLOAT_INEXACT_RESULT 0xC000008Fu
#endif
#ifndef STATUS_FLOAT_DENORMAL_OPERAND
#define STATUS_FLOAT_DENORMAL_OPERAND 0xC000008Du
#endif
#ifndef STATUS_FLOAT_MULTIPLE_TRAPS
#define STATUS_FLOAT_MULTIPLE_TRAPS 0xC00002B5u /* a SIMD exception whose cause is none of these */
#endif
#ifndef EXCEPTION_CONTINUE_EXECUTION
#define EXCEPTION_CONTINUE_EXECUTION (-1)
#endif
#ifndef EXCEPTION_CONTINUE_SEARCH
#define EXCEPTION_CONTINUE_SEARCH 0
#endif

typedef int32_t (*GUEST_EXCEPTION_HANDLER)(GUEST_EXCEPTION *e);

/* HOST_SERVICES (version 1, host-abi §7; version 2 appends the thread services of §10.2: check
 * `version >= 2` and `cbSize >= HOST_SERVICES_V2_SIZE` before using them). */
#ifndef HOST_SERVICES_V1_SIZE
#define HOST_SERVICES_V1_SIZE 96u
#endif
#ifndef HOST_SERVICES_V2_SIZE
#define HOST_SERVICES_V2_SIZE 192u
#endif
typedef uint32_t (*GUEST_THREAD_START)(void *arg);
typedef struct HOST_COMMIT_INFO {
    uint64_t commit_limit;
    uint64_t committed;
    uint64_t critical_reserve;
    uint64_t low_threshold;
    uint64_t high_threshold;
} HOST_COMMIT_INFO;

typedef struct HOST_SERVICES {
    uint32_t cbSize;
    uint32_t version;
    uint32_t page_size;
    uint32_t allocation_granularity;
    uint64_t min_application_address;
    uint64_t max_application_address;
    void (*write)(const char *buf, uint64_t len);
    void (*exit)(int32_t code);
    uint64_t (*ticks_ns)(void);
    void *(*add_vectored_exception_handler)(uint32_t first, GUEST_EXCEPTION_HANDLER h);
    uint32_t (*remove_vectored_exception_handler)(void *handle);
    uint32_t (*get_write_watch)(uint32_t flags, void *base, uint64_t size, void **addresses, uint64_t *count,
                                uint32_t *granularity);
    uint32_t (*reset_write_watch)(void *base, uint64_t size);
    void (*query_commit)(HOST_COMMIT_INFO *out);
    /* version 2 */
    uint32_t cpu_count;
    uint32_t reserved0;
    uint64_t (*create_thread)(GUEST_THREAD_START start, void *arg, uint64_t stack_reserve, uint64_t stack_commit);
    void (*exit_thread)(uint32_t code);
    uint32_t (*wait_thread)(uint64_t thread, uint64_t timeout_ns, uint32_t *exit_code);
    uint32_t (*close_thread)(uint64_t thread);
    uint32_t (*current_thread_id)(void);
    void (*yield)(void);
    void (*sleep_ns)(uint64_t ns);
    uint32_t (*wait_on_address)(volatile void *address, const void *compare, uint64_t size, uint64_t timeout_ns);
    void (*wake_by_address)(void *address, uint32_t all);
    void (*set_thread_pointer)(void *pointer);
    void *(*get_thread_pointer)(void);
} HOST_SERVICES;

/* The entry point every guest defines (declared here with C linkage, so that a C++ definition
 * gets the unmangled name the image's entry point needs). This kernel also passes a third
 * argument, the guest's argument string (run-qemu.sh --guest-args "...", NUL-terminated, "" without
 * one): a guest that takes it defines VMK_GUEST_MAIN_ARGS before including this header, which
 * declares the three-argument form instead. That argument is this kernel's: on another host of
 * the contract the register is undefined. */
#ifdef VMK_GUEST_MAIN_ARGS
int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args);
#else
int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services);
#endif

#ifdef __cplusplus
}
#endif

#endif /* VMK_HOST_ABI_H */
