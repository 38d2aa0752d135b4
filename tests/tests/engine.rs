//! The engine against real components: world detection, the compiled-module
//! cache, refused uploads, and functions that misbehave on purpose.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_host::engine::{CallError, Limits, LoadError, Outcome, WIT_PACKAGE, Worker, World};
use runnel_tests::{batch_of, engine, guest, guests};

fn worker(path: &str, limits: Limits) -> Worker {
    let module = engine(None).load("hostile", &guest(path)).expect("loads");
    Worker::new(Arc::new(module), limits, vec![], None).expect("starts")
}

fn failure(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed {
            message,
            trapped: true,
        } => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn each_world_is_recognised() {
    let engine = engine(None);
    for (path, world) in [
        (guests::THRESHOLD_FILTER, World::Filter),
        (guests::AIRLINE_CSV, World::Map),
        (guests::ECHO_SCORER, World::Scorer),
    ] {
        let module = engine.load("f", &guest(path)).expect(path);
        assert_eq!(module.world(), world, "{path}");
        assert_eq!(module.digest().len(), 64);
    }
}

#[test]
fn a_second_load_comes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest(guests::AIRLINE_CSV);
    let first = engine(Some(dir.path())).load("a", &bytes).unwrap();
    assert!(!first.from_cache());
    // A new engine, as in a new process: the compiled artifact is on disk.
    let second = engine(Some(dir.path())).load("a", &bytes).unwrap();
    assert!(second.from_cache());
    assert_eq!(first.digest(), second.digest());
    // And it runs.
    let mut w = Worker::new(Arc::new(second), Limits::default(), vec![], None).unwrap();
    let p = w.process(&mut batch_of(&["x"])).unwrap();
    assert!(matches!(
        p.outcomes[0],
        Outcome::Failed { trapped: false, .. }
    ));
}

#[test]
fn a_corrupt_cache_file_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest(guests::IDENTITY_FILTER);
    engine(Some(dir.path())).load("f", &bytes).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let again = engine(Some(dir.path())).load("f", &bytes).unwrap();
    assert!(!again.from_cache());
}

/// A cache file whose compiled bytes were changed or cut short fails its
/// digest before wasmtime deserializes it: the module is compiled again and
/// the file replaced, so that the next load comes from the cache again.
#[test]
fn a_tampered_or_truncated_cache_file_is_recompiled_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest(guests::IDENTITY_FILTER);
    engine(Some(dir.path())).load("f", &bytes).unwrap();
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let good = std::fs::read(&file).unwrap();
    let mut tampered = good.clone();
    // A byte of the machine code, past the header and the digest.
    let at = good.len() / 2;
    tampered[at] ^= 0x40;
    for damaged in [tampered, good[..good.len() - 100].to_vec()] {
        std::fs::write(&file, &damaged).unwrap();
        let again = engine(Some(dir.path())).load("f", &bytes).unwrap();
        assert!(!again.from_cache());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            good,
            "the file was not replaced"
        );
        let third = engine(Some(dir.path())).load("f", &bytes).unwrap();
        assert!(third.from_cache());
    }
    // The folder is private, and holds no temporary file.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// One loaded module serves every deployment that runs its digest; each
/// deployment's errors (and log lines) carry its own name, not the name of
/// the deployment that loaded it first.
#[test]
fn a_shared_module_speaks_under_each_deployments_name() {
    let first = engine(None).load("first", &guest(guests::HOSTILE)).unwrap();
    let second = first.with_name("second");
    assert_eq!(first.name(), "first");
    assert_eq!(second.digest(), first.digest());
    let mut w = Worker::new(Arc::new(second), Limits::default(), vec![], None).unwrap();
    let p = w.process(&mut batch_of(&["panic"])).unwrap();
    let message = failure(&p.outcomes[0]);
    assert!(
        message.starts_with("function `second` panicked"),
        "{message}"
    );
}

#[test]
fn bad_uploads_are_refused_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let engine = runnel_host::engine::Engine::new(runnel_host::engine::EngineConfig {
        cache_dir: Some(dir.path().into()),
        max_module_bytes: 1 << 20,
        max_instances: 4,
        ..Default::default()
    })
    .unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = engine.load("random", &random).unwrap_err();
    assert!(matches!(err, LoadError::NotWasm), "{err}");

    // The smallest core module: a magic number and version 1.
    let err = engine.load("core", b"\0asm\x01\0\0\0").unwrap_err();
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");

    let err = engine
        .load("other", &guest(guests::UNKNOWN_WORLD))
        .unwrap_err();
    assert!(matches!(err, LoadError::UnknownWorld { .. }), "{err}");
    assert!(err.to_string().contains("it exports: `greet`"), "{err}");

    let mut truncated = guest(guests::IDENTITY_FILTER);
    truncated.truncate(truncated.len() / 2);
    let err = engine.load("truncated", &truncated).unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");

    let big = vec![0u8; (1 << 20) + 1];
    let err = engine.load("big", &big).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the module is 1048577 bytes, over the limit of 1048576 bytes (a node's --max-module-mib)"
    );

    assert!(
        std::fs::read_dir(dir.path()).map_or(true, |mut d| d.next().is_none()),
        "a refused module was cached"
    );
}

#[test]
fn an_endless_loop_hits_the_deadline_and_the_next_batch_runs() {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut w = worker(guests::HOSTILE, limits);
    let started = Instant::now();
    let p = w.process(&mut batch_of(&["a", "loop", "b"])).unwrap();
    let took = started.elapsed();
    assert_eq!(p.outcomes[0], Outcome::Keep);
    assert_eq!(
        failure(&p.outcomes[1]),
        "function `hostile` ran past its deadline of 200ms per call and was stopped"
    );
    assert_eq!(p.outcomes[2], Outcome::Keep);
    // Two timeouts: the whole batch, then the record alone.
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let next = w.process(&mut batch_of(&["c", "d"])).unwrap();
    assert_eq!(next.outcomes, vec![Outcome::Keep, Outcome::Keep]);
    assert_eq!(w.stats().traps, 2);
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let mut w = worker(guests::HOSTILE, limits);
    let p = w.process(&mut batch_of(&["alloc", "ok"])).unwrap();
    let message = failure(&p.outcomes[0]);
    assert!(
        message.starts_with("function `hostile` tried to grow its memory to ")
            && message.ends_with("over its limit of 32.0 MiB"),
        "{message}"
    );
    assert_eq!(p.outcomes[1], Outcome::Keep);
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let mut w = worker(guests::HOSTILE, Limits::default());
    // The shadow stack (large locals, in linear memory), then the wasm stack.
    let p = w
        .process(&mut batch_of(&["recurse", "ok", "deep"]))
        .unwrap();
    assert_eq!(
        failure(&p.outcomes[0]),
        "function `hostile` overflowed its stack (unbounded recursion?)"
    );
    assert_eq!(p.outcomes[1], Outcome::Keep);
    assert_eq!(
        failure(&p.outcomes[2]),
        "function `hostile` overflowed its stack (unbounded recursion?)"
    );
}

#[test]
fn a_panic_is_isolated_to_its_record_with_the_guest_message() {
    let mut w = worker(guests::HOSTILE, Limits::default());
    let p = w
        .process(&mut batch_of(&["ok", "ok", "panic", "error", "ok"]))
        .unwrap();
    let message = failure(&p.outcomes[2]);
    assert!(
        message.starts_with("function `hostile` panicked: "),
        "{message}"
    );
    assert!(message.contains("asked to panic by offset 2"), "{message}");
    assert_eq!(
        p.outcomes[3],
        Outcome::Failed {
            message: "asked to fail".into(),
            trapped: false
        }
    );
    assert_eq!(
        [&p.outcomes[0], &p.outcomes[1], &p.outcomes[4]],
        [&Outcome::Keep, &Outcome::Keep, &Outcome::Keep]
    );
    // The batch trapped once, then the panicking record alone.
    assert_eq!(w.stats().traps, 2);
}

#[test]
fn guest_output_does_not_break_the_call() {
    let mut w = worker(guests::HOSTILE, Limits::default());
    let p = w.process(&mut batch_of(&["print"])).unwrap();
    assert_eq!(p.outcomes, vec![Outcome::Keep]);
}

#[test]
fn a_scorer_gets_its_model_and_config() {
    let engine = engine(None);
    let module = Arc::new(engine.load("echo", &guest(guests::ECHO_SCORER)).unwrap());
    let model: Arc<[u8]> = Arc::from(&b"score:"[..]);
    let mut w = Worker::new(module.clone(), Limits::default(), vec![], Some(model)).unwrap();
    let p = w.process(&mut batch_of(&["a", "b"])).unwrap();
    let values: Vec<Vec<u8>> = (0..2)
        .flat_map(|i| p.outputs_of(i).map(|r| r.value().unwrap().to_vec()))
        .collect();
    assert_eq!(values, vec![b"score:a".to_vec(), b"score:b".to_vec()]);
    let header = p
        .outputs_of(0)
        .next()
        .unwrap()
        .headers()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(header, ("scored-by", Some(&b"echo"[..])));

    let err = Worker::new(module.clone(), Limits::default(), vec![], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "function `echo` refused to start: the model is empty"
    );
    let config = vec![("fail".to_owned(), "no thanks".to_owned())];
    let err = Worker::new(
        module,
        Limits::default(),
        config,
        Some(Arc::from(&b"m"[..])),
    )
    .unwrap_err();
    assert!(matches!(err, CallError::InitFailed { .. }));
    assert_eq!(
        err.to_string(),
        "function `echo` refused to start: no thanks"
    );
}

#[test]
fn a_function_cannot_start_over_its_memory_limit() {
    let module = engine(None)
        .load("f", &guest(guests::THRESHOLD_FILTER))
        .unwrap();
    let limits = Limits {
        memory_bytes: 64 << 10,
        ..Limits::default()
    };
    let err = Worker::new(Arc::new(module), limits, vec![], None).unwrap_err();
    assert!(
        err.to_string().contains("over its limit of 64.0 KiB"),
        "{err}"
    );
}

/// The identity map forwards every record as it came, whatever its size, over
/// many calls on one instance: outputs share the input batch's bytes, small
/// allocations come from the SDK's free lists and large ones from the system
/// allocator, and reusing both across calls neither corrupts an output nor
/// grows the instance's memory.
#[test]
fn the_identity_map_forwards_records_of_every_size_over_many_calls() {
    use runnel_abi::{BatchBuilder, Frame};
    let module = engine(None)
        .load("identity", &guest(guests::IDENTITY_MAP))
        .unwrap();
    let mut w = Worker::new(Arc::new(module), Limits::default(), vec![], None).unwrap();
    let mut memory_after = Vec::new();
    for call in 0..60usize {
        let mut batch = BatchBuilder::default();
        let mut expected = Vec::new();
        for i in 0..(1 + call % 37) {
            let n = (call * 131 + i * 977) % 3000;
            let value: Vec<u8> = (0..n).map(|j| (j + call + i) as u8).collect();
            let key = format!("k{call}-{i}");
            let header = format!("h{i}");
            let with_header = i % 3 == 0;
            let tombstone = i % 11 == 5;
            let headers: &[(&str, Option<&[u8]>)] = if with_header {
                &[("trace", Some(header.as_bytes()))]
            } else {
                &[]
            };
            batch.push(&Frame {
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: (i % 4 != 1).then_some(key.as_bytes()),
                value: (!tombstone).then_some(value.as_slice()),
                headers,
            });
            expected.push((
                (i % 4 != 1).then(|| key.clone().into_bytes()),
                (!tombstone).then(|| value.clone()),
                with_header.then(|| header.clone().into_bytes()),
            ));
        }
        let p = w.process(&mut batch).unwrap();
        for (i, (key, value, header)) in expected.iter().enumerate() {
            let outputs: Vec<_> = p.outputs_of(i).collect();
            assert_eq!(outputs.len(), 1, "call {call}, record {i}");
            let o = outputs[0];
            assert_eq!(o.key().map(<[u8]>::to_vec), *key, "call {call}, record {i}");
            assert_eq!(
                o.value().map(<[u8]>::to_vec),
                *value,
                "call {call}, record {i}"
            );
            let h: Vec<_> = o.headers().map(Result::unwrap).collect();
            match header {
                Some(v) => assert_eq!(h, vec![("trace", Some(v.as_slice()))]),
                None => assert!(h.is_empty()),
            }
        }
        memory_after.push(w.memory_bytes());
    }
    assert_eq!(w.stats().traps, 0);
    // Memory reaches its high-water mark in the first calls (1.2 MiB here)
    // and stays there: freed blocks are reused, not leaked.
    assert_eq!(memory_after[40], memory_after[59], "{memory_after:?}");
}

/// A component built against another version of the contract is refused
/// with both versions named, whatever it exports (a newer SDK may export
/// what this host would take for one of its worlds).
#[test]
fn a_component_of_another_contract_version_is_refused_naming_both() {
    let engine = engine(None);
    for (import, built) in [
        ("runnel:stream/types@0.2.0", "runnel:stream@0.2.0"),
        ("runnel:stream/state@0.0.9", "runnel:stream@0.0.9"),
        ("runnel:stream/types", "runnel:stream without a version"),
    ] {
        let wasm =
            wat::parse_str(format!(r#"(component (import "{import}" (instance)))"#)).unwrap();
        let err = engine.load("other-version", &wasm).unwrap_err();
        assert!(matches!(err, LoadError::Version { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the component was built against {built}, and this runnel speaks \
                 runnel:stream@0.1.0: rebuild it with an SDK made for runnel:stream@0.1.0"
            )
        );
    }
    // The version the host names is the one of the WIT it was built from.
    let wit = include_str!("../../wit/runnel.wit");
    assert!(
        wit.contains(&format!(
            "package {};",
            WIT_PACKAGE.replace(":stream", ":%stream")
        )),
        "wit/runnel.wit is not {WIT_PACKAGE}"
    );
    // A real guest imports the types interface with its version: the same
    // guest with the version's bytes changed is refused.
    let ours = b"runnel:stream/types@0.1.0";
    let mut other = guest(guests::IDENTITY_FILTER);
    let mut changed = 0;
    for at in 0..other.len().saturating_sub(ours.len()) {
        if other[at..].starts_with(ours) {
            other[at + ours.len() - 1] = b'2';
            changed += 1;
        }
    }
    assert!(
        changed > 0,
        "the identity filter names runnel:stream/types@0.1.0"
    );
    let err = engine.load("filter-0.1.2", &other).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the component was built against runnel:stream@0.1.2,"),
        "{err}"
    );
}
