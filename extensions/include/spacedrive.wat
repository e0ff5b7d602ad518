;; spacedrive.wat — the capengine ABI imports for hand-written WAT guests (docs/abi.md).
;; Paste these lines at the top of your (module ...). All values are i32; pointers are offsets into
;; the exported "memory". Negative returns are ABI faults: -1 bad range, -2 request over the size cap.
;; Prefer spacedrive_call_into: one host call when the envelope fits in out (return value <= out_cap);
;; otherwise the envelope is held and spacedrive_result fetches it, exactly as after spacedrive_call.
  (import "spacedrive" "spacedrive_call"
    (func $spacedrive_call (param $method_ptr i32) (param $method_len i32) (param $library_id_ptr i32)
                           (param $payload_ptr i32) (param $payload_len i32) (result i32)))
  (import "spacedrive" "spacedrive_call_into"
    (func $spacedrive_call_into (param $method_ptr i32) (param $method_len i32) (param $library_id_ptr i32)
                                (param $payload_ptr i32) (param $payload_len i32) (param $out_ptr i32)
                                (param $out_cap i32) (result i32)))
  (import "spacedrive" "spacedrive_result" (func $spacedrive_result (param $out_ptr i32) (param $out_cap i32) (result i32)))
  (import "spacedrive" "spacedrive_input" (func $spacedrive_input (param $out_ptr i32) (param $out_cap i32) (result i32)))
  (import "spacedrive" "spacedrive_log" (func $spacedrive_log (param $level i32) (param $ptr i32) (param $len i32)))
