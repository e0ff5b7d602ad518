/* Photo OCR: list a directory of a library, read each image, OCR it, store the text as an "ocr-text" sidecar.
 * Input: {"library": "<uuid>", "dir": "/photos"} (dir defaults to /photos). Every step is a spacedrive_call decided by policy. */
#include "spacedrive.h"

static char input[4096];
static char listing[256 * 1024];
static char envelope[256 * 1024];
static char payload[128 * 1024];
static char text[96 * 1024];
static char line[512];

static int has_image_suffix(const char *name) {
  static const char *suffixes[] = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".PNG", ".JPG", ".JPEG"};
  size_t n = strlen(name);
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    size_t s = strlen(suffixes[i]);
    if (n > s && strcmp(name + n - s, suffixes[i]) == 0) return 1;
  }
  return 0;
}

static void report(const char *what, const char *path, const char *env) {
  char code[64] = "?";
  sd_json_string(env, "code", code, sizeof code);
  sd_concat(line, sizeof line, what, " ", path, ": ", sd_ok(env) ? "ok" : code, NULL);
  sd_log(sd_ok(env) ? SD_INFO : SD_WARN, line);
}

__attribute__((export_name("execute_scan"))) int32_t execute_scan(void) {
  uint8_t library[16];
  char library_text[64], dir[1024], name[1024], path[2048];
  if (sd_input(input, sizeof input) < 0 || !sd_json_string(input, "library", library_text, sizeof library_text) ||
      sd_parse_uuid(library_text, library) != 0) {
    sd_log(SD_ERROR, "input must be {\"library\": \"<uuid>\", \"dir\": \"/photos\"} (dir is optional)");
    return SD_FAILED;
  }
  if (!sd_json_string(input, "dir", dir, sizeof dir)) sd_concat(dir, sizeof dir, "/photos", NULL);
  sd_concat(payload, sizeof payload, "{\"path\":\"", dir, "\"}", NULL);
  if (sd_call("vdfs.list_dir", library, payload, listing, sizeof listing) < 0 || !sd_ok(listing)) {
    report("list", dir, listing);
    return SD_FAILED;
  }
  int done = 0, failed = 0;
  const char *cursor = listing;
  while ((cursor = sd_json_string(cursor, "name", name, sizeof name)) != NULL) {
    if (!has_image_suffix(name) || strchr(name, '\\') || strchr(name, '"')) continue;
    sd_concat(path, sizeof path, dir, strcmp(dir, "/") ? "/" : "", name, NULL);
    sd_concat(payload, sizeof payload, "{\"path\":\"", path, "\",\"length\":1048576}", NULL);
    if (sd_call("vdfs.read_file", library, payload, envelope, sizeof envelope) < 0 || !sd_ok(envelope)) {
      report("read", path, envelope);
      failed++;
      continue;
    }
    sd_concat(payload, sizeof payload, "{\"path\":\"", path, "\"}", NULL);
    if (sd_call("ai.ocr", library, payload, envelope, sizeof envelope) < 0 || !sd_ok(envelope) ||
        !sd_json_string(envelope, "text", text, sizeof text)) {
      report("ocr", path, envelope);
      failed++;
      continue;
    }
    /* text is still JSON-escaped, so it can go straight back into a JSON string. */
    sd_concat(payload, sizeof payload, "{\"path\":\"", path, "\",\"kind\":\"ocr-text\",\"data\":\"", text, "\"}", NULL);
    if (sd_call("vdfs.write_sidecar", library, payload, envelope, sizeof envelope) < 0 || !sd_ok(envelope)) {
      report("sidecar", path, envelope);
      failed++;
      continue;
    }
    sd_concat(line, sizeof line, "ocr ", path, ": ", text, NULL);
    sd_log(SD_INFO, line);
    done++;
  }
  char a[12], b[12];
  sd_concat(line, sizeof line, "scanned ", dir, ": ", sd_itoa(done, a), " image(s) recognised, ", sd_itoa(failed, b),
            " failed", NULL);
  sd_log(SD_INFO, line);
  return failed ? SD_FAILED : SD_COMPLETED;
}
