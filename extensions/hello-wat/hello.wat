;; hello-wat: reads one file of the sample library and logs the envelope it gets back.
;; Input: the vdfs.read_file payload itself, e.g. {"path": "/docs/hello.txt"}.
;; The library id is the sample library's (6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6), 16 raw bytes at offset 64.
(module
  ;; --- extensions/include/spacedrive.wat ---
  (import "spacedrive" "spacedrive_call_into"
    (func $spacedrive_call_into (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_input" (func $spacedrive_input (param i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_log" (func $spacedrive_log (param i32 i32 i32)))
  ;; ---
  (memory (export "memory") 4)  ;; 256 KiB: [0,1024) constants, [1024,65536) input, [65536,262144) envelope
  (data (i32.const 0) "vdfs.read_file")                       ;; method, 14 bytes
  (data (i32.const 32) "{\"ok\":true")                        ;; success prefix, 10 bytes
  (data (i32.const 64) "\6c\1f\0e\4a\2b\3d\4c\5e\8f\90\a1\b2\c3\d4\e5\f6")  ;; library id

  (func $starts_ok (param $ptr i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.lt_u (local.get $len) (i32.const 10)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.eq (local.get $i) (i32.const 10)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))
                    (i32.load8_u (i32.add (i32.const 32) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  (func (export "execute_read") (result i32)
    (local $in i32) (local $n i32)
    (local.set $in (call $spacedrive_input (i32.const 1024) (i32.const 64512)))
    (if (i32.or (i32.lt_s (local.get $in) (i32.const 0)) (i32.gt_s (local.get $in) (i32.const 64512)))
      (then (return (i32.const 2))))
    ;; one host call: the envelope lands at 65536 when it fits in the 196608 bytes there
    (local.set $n (call $spacedrive_call_into (i32.const 0) (i32.const 14) (i32.const 64)
                                              (i32.const 1024) (local.get $in) (i32.const 65536) (i32.const 196608)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 2))))
    (if (i32.gt_s (local.get $n) (i32.const 196608)) (then (return (i32.const 2))))
    (call $spacedrive_log (i32.const 1) (i32.const 65536) (local.get $n))
    (if (result i32) (call $starts_ok (i32.const 65536) (local.get $n))
      (then (i32.const 0)) (else (i32.const 2)))))
