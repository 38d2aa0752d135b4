;; A filter that grows a core wasm table without bound: for a record whose
;; value is `grow`, it calls `table.grow` on a funcref table in a loop, 1,000
;; elements at a time, whatever each call returns. Every other record is kept.
;;
;; Written as component text because Rust cannot emit `table.grow`; the test
;; turns it into a binary with the `wat` crate. It implements the `filter`
;; world of `wit/runnel.wit` by hand: a bump allocator for `cabi_realloc`,
;; reset after each call by `post-return`, and the canonical ABI's flat
;; signatures (`filter` takes the batch's two lists as four i32 and returns a
;; pointer to `verdicts`; `init` returns a pointer to its `result`).
(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 0 funcref)
    ;; Below it: the results of `init` (at 16) and `filter` (at 32).
    (global $heap (mut i32) (i32.const 1024))

    (func $alloc (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
      (result i32)
      (local $ptr i32)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
      (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
        (then
          (if (i32.eq
                (memory.grow
                  (i32.add
                    (i32.shr_u
                      (i32.sub (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
                      (i32.const 16))
                    (i32.const 1)))
                (i32.const -1))
            (then unreachable))))
      (local.get $ptr))

    (func (export "reset") (param i32)
      (global.set $heap (i32.const 1024)))

    ;; result<_, string>: discriminant 0, ok.
    (func (export "init") (param i32 i32) (result i32)
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.const 16))

    (func (export "filter")
      (param $data i32) (param $data_len i32) (param $index i32) (param $n i32)
      (result i32)
      (local $keep i32) (local $i i32) (local $frame i32) (local $key_len i32)
      (local.set $keep (call $alloc (i32.const 0) (i32.const 0) (i32.const 1) (local.get $n)))
      (block $done
        (loop $record
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $frame
            (i32.add (local.get $data)
              (i32.load (i32.add (local.get $index) (i32.shl (local.get $i) (i32.const 2))))))
          ;; The value follows the key; 0xffff_ffff is no key.
          (local.set $key_len (i32.load offset=20 (local.get $frame)))
          (if (i32.eq (local.get $key_len) (i32.const -1))
            (then (local.set $key_len (i32.const 0))))
          (if (i32.and
                (i32.eq (i32.load offset=24 (local.get $frame)) (i32.const 4))
                ;; "grow", little-endian
                (i32.eq
                  (i32.load offset=32 (i32.add (local.get $frame) (local.get $key_len)))
                  (i32.const 0x776f7267)))
            (then
              (loop $grow
                (drop (table.grow $t (ref.null func) (i32.const 1000)))
                (br $grow))))
          (i32.store8 (i32.add (local.get $keep) (local.get $i)) (i32.const 1))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $record)))
      ;; verdicts { keep, failures: [] }
      (i32.store (i32.const 32) (local.get $keep))
      (i32.store (i32.const 36) (local.get $n))
      (i32.store (i32.const 40) (i32.const 0))
      (i32.store (i32.const 44) (i32.const 0))
      (i32.const 32)))

  (core instance $i (instantiate $m))

  ;; Types named in exported signatures must be exported themselves.
  (type $batch' (record (field "data" (list u8)) (field "index" (list u32))))
  (export $batch "batch" (type $batch'))
  (type $record-error' (record (field "message" string)))
  (export $record-error "record-error" (type $record-error'))
  (type $failure' (record (field "index" u32) (field "error" $record-error)))
  (export $failure "failure" (type $failure'))
  (type $verdicts' (record (field "keep" (list u8)) (field "failures" (list $failure))))
  (export $verdicts "verdicts" (type $verdicts'))

  (func $init (param "config" (list (tuple string string))) (result (result (error string)))
    (canon lift (core func $i "init")
      (memory $i "memory") (realloc (func $i "cabi_realloc"))
      (post-return (func $i "reset"))))
  (export "init" (func $init))

  (func $filter (param "batch" $batch) (result $verdicts)
    (canon lift (core func $i "filter")
      (memory $i "memory") (realloc (func $i "cabi_realloc"))
      (post-return (func $i "reset"))))
  (export "filter" (func $filter)))
