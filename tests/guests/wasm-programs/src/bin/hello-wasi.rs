//! The WASI program `./run-qemu.sh` runs in the wasm-runtime guest after the GC runtime: plain
//! std Rust compiled to wasm32-wasip1, unchanged. It prints its arguments and the clock, grows its
//! linear memory (a sieve over 4 M numbers, then a 16 MiB buffer) and checks its results.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello-wasi: hello from WebAssembly, argv = {args:?}");
    let start = Instant::now();

    // Sieve of Eratosthenes: 4 MiB of linear memory.
    let n: usize = 4 << 20;
    let mut composite = vec![false; n];
    let mut primes = 0u32;
    for i in 2..n {
        if !composite[i] {
            primes += 1;
            let mut j = i.saturating_mul(i);
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    let expected = 295_947; // primes below 2^22
    println!("{} primes below {n}: {primes} (expected {expected})", if primes == expected { "ok" } else { "FAILED" });
    drop(composite);

    // 16 MiB more, written and summed.
    let buf: Vec<u64> = (0..(2u64 << 20)).collect();
    let sum: u64 = buf.iter().sum();
    let want = (2u64 << 20) * ((2u64 << 20) - 1) / 2;
    println!("{} sum of a 16 MiB buffer: {sum} (expected {want})", if sum == want { "ok" } else { "FAILED" });
    eprintln!("hello-wasi: done in {} ms (stderr)", start.elapsed().as_millis());
    let failed = u32::from(primes != expected) + u32::from(sum != want);
    println!("{} passed, {failed} failed", 2 - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
