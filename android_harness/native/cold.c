/* Cold-weight timing: the last-level cache size (cpuinfo, sysfs, fallback) and the rotation length. */
#include "cold.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xnn_api.h"

#define SYSFS_CACHE_DIR "/sys/devices/system/cpu/cpu0/cache"

size_t cold_parse_size(const char* text) {
  char* end;
  const double value = strtod(text, &end);
  if (end == text || !(value > 0)) return 0;
  double scale = 1.0;
  if (*end == 'K' || *end == 'k') scale = 1024.0;
  else if (*end == 'M' || *end == 'm') scale = 1024.0 * 1024.0;
  else if (*end == 'G' || *end == 'g') scale = 1024.0 * 1024.0 * 1024.0;
  if (scale != 1.0) end++;
  if (*end != '\0') return 0;
  return (size_t) (value * scale);
}

static int read_line(const char* path, char* out, size_t cap) {
  FILE* f = fopen(path, "r");
  if (f == NULL) return -1;
  const int ok = fgets(out, (int) cap, f) != NULL;
  fclose(f);
  if (!ok) return -1;
  out[strcspn(out, "\n")] = '\0';
  return 0;
}

/* The data or unified cache of the highest level cpu0 lists (index0, index1, ... until one is missing). */
static size_t sysfs_last_level_cache(void) {
  size_t best = 0;
  long best_level = 0;
  for (int index = 0; index < 16; index++) {
    char path[128], text[64];
    snprintf(path, sizeof path, SYSFS_CACHE_DIR "/index%d/level", index);
    if (read_line(path, text, sizeof text) != 0) break;
    const long level = strtol(text, NULL, 10);
    snprintf(path, sizeof path, SYSFS_CACHE_DIR "/index%d/type", index);
    if (read_line(path, text, sizeof text) == 0 && strcmp(text, "Instruction") == 0) continue;
    snprintf(path, sizeof path, SYSFS_CACHE_DIR "/index%d/size", index);
    if (read_line(path, text, sizeof text) != 0) continue;
    const size_t size = cold_parse_size(text);
    if (size > 0 && (level > best_level || (level == best_level && size > best))) {
      best = size;
      best_level = level;
    }
  }
  return best;
}

static struct cache_size cached;

void cold_set_cache_size(size_t bytes) {
  cached.bytes = bytes;
  cached.source = "--cold-bytes";
}

const struct cache_size* cold_cache_size(void) {
  if (cached.bytes != 0) return &cached;
  if (cpuinfo_initialize() && cpuinfo_get_max_cache_size() > 0) {
    cached.bytes = cpuinfo_get_max_cache_size();
    cached.source = "cpuinfo";
  } else if ((cached.bytes = sysfs_last_level_cache()) > 0) {
    cached.source = "sysfs";
  } else {
#if defined(__aarch64__) || defined(__arm__)
    cached.bytes = (size_t) 4 << 20;
#else
    cached.bytes = (size_t) 128 << 20;
#endif
    cached.source = "fallback";
  }
  return &cached;
}

size_t cold_copies(double bytes_per_copy, size_t cache_bytes) {
  if (!(bytes_per_copy >= 1.0)) bytes_per_copy = 1.0;
  const double copies = 1.0 + ceil((double) cache_bytes / bytes_per_copy);
  return copies >= COLD_MAX_COPIES ? COLD_MAX_COPIES : (size_t) copies;
}
