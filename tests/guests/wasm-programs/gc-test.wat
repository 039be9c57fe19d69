;; WasmGC test module: allocates structs and arrays in a loop, twice as many bytes as the GC heap's
;; whole 64 MiB reservation could hold, keeps a ring of 64 live lists, and checks every result. Exits through WASI proc_exit: 0 if every check held, 1 otherwise.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "gc-test: ok\n")
  (data (i32.const 96) "gc-test: FAILED\n")
  (type $node (struct (field $value (mut i64)) (field $next (mut (ref null $node)))))
  (type $bytes (array (mut i32)))
  (type $ring (array (mut (ref null $node))))

  ;; A list of n nodes with values 1..n; returns its head.
  (func $list (param $n i32) (result (ref null $node))
    (local $head (ref null $node))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $head (struct.new $node (i64.extend_i32_u (local.get $n)) (local.get $head)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $head))

  ;; The sum of a list's values.
  (func $sum (param $l (ref null $node)) (result i64)
    (local $s i64)
    (block $done
      (loop $next
        (br_if $done (ref.is_null (local.get $l)))
        (local.set $s (i64.add (local.get $s) (struct.get $node $value (local.get $l))))
        (local.set $l (struct.get $node $next (local.get $l)))
        (br $next)))
    (local.get $s))

  (func $say (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $i i32) (local $ok i32) (local $arr (ref null $bytes)) (local $ring (ref $ring))
    (local.set $ok (i32.const 1))
    (local.set $ring (array.new_default $ring (i32.const 64)))
    ;; 1,000 rounds: a list of 20 nodes and a 32,768-element array (128 KiB): about 130 MiB
    ;; allocated in all, against a heap of at most 64 MiB.
    (block $done
      (loop $round
        (br_if $done (i32.ge_u (local.get $i) (i32.const 1000)))
        (array.set $ring (local.get $ring) (i32.and (local.get $i) (i32.const 63)) (call $list (i32.const 20)))
        (local.set $arr (array.new $bytes (local.get $i) (i32.const 32768)))
        (if (i32.ne (array.get $bytes (local.get $arr) (i32.const 32767)) (local.get $i))
          (then (local.set $ok (i32.const 0))))
        (if (i64.ne (call $sum (array.get $ring (local.get $ring) (i32.and (local.get $i) (i32.const 63)))) (i64.const 210))
          (then (local.set $ok (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $round)))
    ;; Every live list of the ring is still intact.
    (local.set $i (i32.const 0))
    (block $done
      (loop $check
        (br_if $done (i32.ge_u (local.get $i) (i32.const 64)))
        (if (i64.ne (call $sum (array.get $ring (local.get $ring) (local.get $i))) (i64.const 210))
          (then (local.set $ok (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $check)))
    (if (local.get $ok)
      (then (call $say (i32.const 64) (i32.const 12)) (call $proc_exit (i32.const 0)))
      (else (call $say (i32.const 96) (i32.const 16)) (call $proc_exit (i32.const 1))))))
