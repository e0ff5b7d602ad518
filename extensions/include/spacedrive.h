/* spacedrive.h — guest bindings for the capengine ABI (docs/abi.md).
 *
 * Build: clang --target=wasm32-wasi -O2 -nostartfiles -Wl,--no-entry \
 *          -Wl,--export=execute_<job> -I extensions/include -o ext.wasm ext.c
 * Everything here is static inline: include it in one translation unit per module.
 */
#ifndef SPACEDRIVE_H
#define SPACEDRIVE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SD_IMPORT(name) __attribute__((import_module("spacedrive"), import_name(#name)))

/* The host functions. Negative returns are ABI faults: -1 bad memory range, -2 request too large.
 * spacedrive_call_into is spacedrive_call that also copies the envelope to out when it fits (return value
 * <= out_cap): one host call instead of two. Use it; spacedrive_call stays for older guests. */
SD_IMPORT(spacedrive_call)
int32_t spacedrive_call(const char *method, int32_t method_len, const uint8_t *library_id,
                        const char *payload, int32_t payload_len);
SD_IMPORT(spacedrive_call_into)
int32_t spacedrive_call_into(const char *method, int32_t method_len, const uint8_t *library_id,
                             const char *payload, int32_t payload_len, char *out, int32_t out_cap);
SD_IMPORT(spacedrive_result) int32_t spacedrive_result(char *out, int32_t out_cap);
SD_IMPORT(spacedrive_input) int32_t spacedrive_input(char *out, int32_t out_cap);
SD_IMPORT(spacedrive_log) void spacedrive_log(int32_t level, const char *msg, int32_t len);

enum { SD_DEBUG = 0, SD_INFO = 1, SD_WARN = 2, SD_ERROR = 3 };
enum { SD_COMPLETED = 0, SD_INTERRUPTED = 1, SD_FAILED = 2 };

static inline void sd_log(int32_t level, const char *msg) { spacedrive_log(level, msg, (int32_t)strlen(msg)); }

/* Call an operation (one host call); the envelope lands in out (NUL-terminated). Returns its length, or:
 * a negative ABI fault, or -3 when out is too small (the envelope stays held: sd_result fetches it). */
static inline int32_t sd_call(const char *method, const uint8_t library_id[16], const char *payload,
                              char *out, int32_t out_cap) {
  int32_t cap = out_cap > 0 ? out_cap - 1 : 0; /* room for the NUL */
  int32_t n = spacedrive_call_into(method, (int32_t)strlen(method), library_id, payload, (int32_t)strlen(payload),
                                   cap > 0 ? out : 0, cap);
  if (n < 0) return n;
  if (n > cap) return -3;
  out[n] = '\0';
  return n;
}

/* The envelope of the last call (after sd_call returned -3) into a bigger out (NUL-terminated). Returns its
 * length, a negative ABI fault, or -3 when out is still too small. */
static inline int32_t sd_result(char *out, int32_t out_cap) {
  int32_t n = spacedrive_result(out, out_cap > 0 ? out_cap - 1 : 0);
  if (n < 0 || n + 1 > out_cap) return n < 0 ? n : -3;
  out[n] = '\0';
  return n;
}

/* The job's input JSON (NUL-terminated); returns its length, or -3 when out is too small. */
static inline int32_t sd_input(char *out, int32_t out_cap) {
  int32_t n = spacedrive_input(out, out_cap - 1);
  if (n < 0 || n + 1 > out_cap) return n < 0 ? n : -3;
  out[n] = '\0';
  return n;
}

/* "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6" -> 16 bytes (RFC 4122 order). Returns 0, or -1 on bad input. */
static inline int sd_parse_uuid(const char *text, uint8_t out[16]) {
  int nibbles = 0;
  for (const char *p = text; *p && nibbles < 32; p++) {
    int v;
    if (*p == '-') continue;
    if (*p >= '0' && *p <= '9') v = *p - '0';
    else if (*p >= 'a' && *p <= 'f') v = *p - 'a' + 10;
    else if (*p >= 'A' && *p <= 'F') v = *p - 'A' + 10;
    else return -1;
    if (nibbles % 2 == 0) out[nibbles / 2] = (uint8_t)(v << 4);
    else out[nibbles / 2] |= (uint8_t)v;
    nibbles++;
  }
  return nibbles == 32 ? 0 : -1;
}

/* 1 when the envelope says {"ok":true ...} (the host always writes "ok" first, without spaces). */
static inline int sd_ok(const char *envelope) { return strncmp(envelope, "{\"ok\":true", 10) == 0; }

/* Find "key": "value" in a JSON text and copy the raw (still escaped) string value into out.
 * Returns a pointer just past the value in json, or NULL. Good enough for flat, well-formed JSON such as the
 * host's envelopes; not a general parser (a key inside a string value can fool it). */
static inline const char *sd_json_string(const char *json, const char *key, char *out, size_t out_cap) {
  char pattern[80];
  size_t klen = strlen(key);
  if (klen + 3 > sizeof pattern || out_cap == 0) return NULL;
  pattern[0] = '"';
  memcpy(pattern + 1, key, klen);
  memcpy(pattern + 1 + klen, "\"", 2);
  for (const char *p = strstr(json, pattern); p; p = strstr(p + 1, pattern)) {
    const char *q = p + klen + 2;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q != ':') continue;
    q++;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q != '"') continue;
    q++;
    size_t n = 0;
    while (*q && *q != '"') {
      if (*q == '\\' && q[1]) {
        if (n + 2 >= out_cap) return NULL;
        out[n++] = *q++;
      }
      if (n + 1 >= out_cap) return NULL;
      out[n++] = *q++;
    }
    if (*q != '"') return NULL;
    out[n] = '\0';
    return q + 1;
  }
  return NULL;
}

/* Concatenate NUL-terminated strings (the list ends with NULL) into out, truncating to fit. No stdio, so the
 * module imports nothing but the four spacedrive functions. Returns out. */
static inline char *sd_concat(char *out, size_t out_cap, ...) {
  va_list ap;
  size_t n = 0;
  va_start(ap, out_cap);
  for (const char *s = va_arg(ap, const char *); s != NULL; s = va_arg(ap, const char *)) {
    size_t len = strlen(s);
    if (n + len + 1 > out_cap) len = out_cap - n - 1;
    memcpy(out + n, s, len);
    n += len;
  }
  va_end(ap);
  out[n] = '\0';
  return out;
}

/* Decimal text of v in buf (at least 12 bytes). */
static inline const char *sd_itoa(int32_t v, char buf[12]) {
  char tmp[12];
  int i = 0, neg = v < 0;
  uint32_t u = neg ? 0u - (uint32_t)v : (uint32_t)v;
  do { tmp[i++] = (char)('0' + u % 10); u /= 10; } while (u);
  int j = 0;
  if (neg) buf[j++] = '-';
  while (i) buf[j++] = tmp[--i];
  buf[j] = '\0';
  return buf;
}

#endif
