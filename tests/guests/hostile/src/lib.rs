//! A filter that misbehaves when a record asks it to: its value says how.
//!
//! `loop` spins forever, `alloc` allocates without bound, `recurse` overflows
//! the shadow stack in linear memory, `deep` the wasm stack, `panic` panics, `print` writes to stdout and stderr, `error`
//! returns a per-record error; `sleep` sleeps for two minutes (in a host
//! call, where epoch interruption cannot reach), `stdin` reads stdin to its
//! end, `flood` prints 100 MB of 100-byte lines to stdout in one `write_all`,
//! `shout` fills stderr with long lines and panics with a 100 KB message;
//! a value that starts with `nap` sleeps 1 ms and is kept (a slow record);
//! anything else is kept.

use std::io::{Read, Write};

use runnel_sdk::{Record, Result, bail};

#[runnel_sdk::filter]
fn hostile(record: &Record) -> Result<bool> {
    match record.value_str()? {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recurse" => Ok(recurse(std::hint::black_box(1)) > 0),
        "deep" => Ok(deep(std::hint::black_box(1)) > 0),
        "panic" => panic!("asked to panic by offset {}", record.offset()),
        "print" => {
            println!("hello from stdout");
            eprintln!("hello from stderr");
            Ok(true)
        }
        "error" => bail!("asked to fail"),
        "shout" => {
            for _ in 0..16 {
                eprintln!("{}", "x".repeat(4000));
            }
            panic!("{}", "y".repeat(100_000))
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(120));
            Ok(true)
        }
        "stdin" => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            Ok(input.is_empty())
        }
        "flood" => {
            let mut flood = Vec::with_capacity(100 << 20);
            while flood.len() < 100 << 20 {
                flood.extend_from_slice(&[b'x'; 99]);
                flood.push(b'\n');
            }
            std::io::stdout().write_all(&flood)?;
            Ok(true)
        }
        nap if nap.starts_with("nap") => {
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(true)
        }
        _ => Ok(true),
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[3] + 1) + buf[7]
}

/// Recursion whose frames stay on the wasm stack: no local lives in memory.
#[inline(never)]
fn deep(n: u64) -> u64 {
    if n == u64::MAX {
        0
    } else {
        deep(n + 1).wrapping_mul(3).wrapping_add(n)
    }
}
