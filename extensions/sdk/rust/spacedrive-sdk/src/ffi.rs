//! The four host functions of docs/abi.md and the only `unsafe` code of the SDK.
//!
//! Everything else in the SDK goes through the safe wrappers below: `call` (send a request, fetch the
//! envelope with the "ask the size, allocate, fetch" dance), `input` and `log`.

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "spacedrive")]
extern "C" {
    fn spacedrive_call(method_ptr: *const u8, method_len: i32, library_ptr: *const u8, payload_ptr: *const u8,
                       payload_len: i32) -> i32;
    fn spacedrive_result(out_ptr: *mut u8, out_cap: i32) -> i32;
    fn spacedrive_input(out_ptr: *mut u8, out_cap: i32) -> i32;
    fn spacedrive_log(level: i32, ptr: *const u8, len: i32);
}

/// A negative return of the ABI: -1 a range outside linear memory, -2 a request over the size cap.
pub type Fault = i32;

/// Lengths cross the ABI as i32; anything longer is a request over every cap the host has.
fn len32(bytes: &[u8]) -> Result<i32, Fault> {
    i32::try_from(bytes.len()).map_err(|_| -2)
}

/// Copy a held buffer of `len` bytes out of the host with `fetch(ptr, cap)`.
fn fetch(len: i32, fetch: impl Fn(*mut u8, i32) -> i32) -> Result<Vec<u8>, Fault> {
    if len < 0 {
        return Err(len);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(len as usize);
    let got = fetch(buf.as_mut_ptr(), len);
    if got != len {
        return Err(if got < 0 { got } else { -1 });
    }
    // SAFETY: the host wrote exactly `len` initialised bytes into the first `len` bytes of the capacity.
    unsafe { buf.set_len(len as usize) };
    Ok(buf)
}

/// Call `method` (with a 16-byte library id or none) and return the response envelope's bytes.
#[cfg(target_arch = "wasm32")]
pub fn call(method: &str, library: Option<&[u8; 16]>, payload: &[u8]) -> Result<Vec<u8>, Fault> {
    let library_ptr = library.map_or(core::ptr::null(), |id| id.as_ptr());
    // SAFETY: every pointer/length pair describes a live borrowed slice; the host only reads them.
    let n = unsafe { spacedrive_call(method.as_ptr(), len32(method.as_bytes())?, library_ptr, payload.as_ptr(),
                                     len32(payload)?) };
    // SAFETY: `fetch` hands a writable buffer of `cap` bytes.
    fetch(n, |ptr, cap| unsafe { spacedrive_result(ptr, cap) })
}

/// The job's input JSON.
#[cfg(target_arch = "wasm32")]
pub fn input() -> Result<Vec<u8>, Fault> {
    // SAFETY: a null pointer with capacity 0 only asks the size; the host writes nothing.
    let n = unsafe { spacedrive_input(core::ptr::null_mut(), 0) };
    // SAFETY: `fetch` hands a writable buffer of `cap` bytes.
    fetch(n, |ptr, cap| unsafe { spacedrive_input(ptr, cap) })
}

/// One log line (the host cuts it at 4 KiB).
#[cfg(target_arch = "wasm32")]
pub fn log(level: i32, message: &str) {
    let len = message.len().min(i32::MAX as usize) as i32;
    // SAFETY: the pointer/length pair describes the borrowed string.
    unsafe { spacedrive_log(level, message.as_ptr(), len) }
}

// Off wasm (cargo check/doc on the build machine) there is no host: calls fail as ABI faults, logs go to stderr.
#[cfg(not(target_arch = "wasm32"))]
pub fn call(_method: &str, _library: Option<&[u8; 16]>, payload: &[u8]) -> Result<Vec<u8>, Fault> {
    len32(payload)?;
    fetch(-1, |_, _| -1)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn input() -> Result<Vec<u8>, Fault> {
    Err(-1)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: i32, message: &str) {
    eprintln!("[{}] {}", level, message);
}
