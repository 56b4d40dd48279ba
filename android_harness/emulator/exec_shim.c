/* LD_PRELOAD shim for the emulated phone's shell (android_harness/emulator/shell.py).
 *
 * Why: this host has no binfmt_misc entry for aarch64, so execve() of an arm64 ELF
 * (a pushed test binary, or the runner bundle's ld-linux-aarch64.so.1 called from its
 * launcher) would fail with ENOEXEC. The shim re-routes such execs through
 * qemu-aarch64-static, maps phone paths (/data/..., /system/bin/sh) into the sandbox,
 * and, while the "disk full" fault is on, fails writes under the phone's /data with ENOSPC.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;
typedef int (*execve_fn)(const char *, char *const[], char *const[]);

static int real_execve(const char *path, char *const argv[], char *const envp[]) {
    static execve_fn fn;
    if (!fn) fn = (execve_fn)dlsym(RTLD_NEXT, "execve");
    return fn(path, argv, envp);
}

static int has_prefix_dir(const char *path, const char *dir) {
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* Phone path -> host path. Returns path itself when no mapping applies. */
static const char *map_path(const char *path, char *buf, size_t size) {
    const char *root = getenv("JCW_EMU_ROOT");
    if (strcmp(path, "/system/bin/sh") == 0) return "/bin/sh";
    if (root && (has_prefix_dir(path, "/data") || has_prefix_dir(path, "/sdcard"))) {
        if ((size_t)snprintf(buf, size, "%s%s", root, path) < size) return buf;
    }
    return path;
}

static int is_aarch64_elf(const char *path) {
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    return n == (ssize_t)sizeof h && memcmp(h, "\177ELF", 4) == 0 && h[4] == 2 && h[5] == 1
           && (h[18] | (h[19] << 8)) == 183 /* EM_AARCH64 */;
}

static int has_android_shebang(const char *path) {
    char h[16];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    return n >= 16 && memcmp(h, "#!/system/bin/sh", 16) == 0;
}

int execve(const char *path, char *const argv[], char *const envp[]) {
    char mapped[PATH_MAX];
    const char *target = map_path(path, mapped, sizeof mapped);
    int argc = 0;
    for (char *const *a = argv; a && *a; a++) argc++;
    if (is_aarch64_elf(target)) {
        const char *qemu = getenv("JCW_EMU_QEMU");
        char **args = calloc((size_t)argc + 7, sizeof *args);
        if (!args) { errno = ENOMEM; return -1; }
        int i = 0;
        args[i++] = (char *)(qemu ? qemu : "qemu-aarch64-static");
        args[i++] = "-U"; args[i++] = "LD_PRELOAD";          /* the guest must not load this x86 shim */
        args[i++] = "-0"; args[i++] = (char *)(argc ? argv[0] : target);
        args[i++] = (char *)target;
        for (int a = 1; a < argc; a++) args[i++] = argv[a];
        args[i] = NULL;
        int rc = real_execve(args[0], args, envp);
        int saved = errno; free(args); errno = saved;
        return rc;
    }
    if (has_android_shebang(target)) {
        char **args = calloc((size_t)argc + 3, sizeof *args);
        if (!args) { errno = ENOMEM; return -1; }
        args[0] = "/bin/sh"; args[1] = (char *)target;
        for (int a = 1; a < argc; a++) args[a + 1] = argv[a];
        int rc = real_execve("/bin/sh", args, envp);
        int saved = errno; free(args); errno = saved;
        return rc;
    }
    return real_execve(target, argv, envp);
}

int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

int execvpe(const char *file, char *const argv[], char *const envp[]) {
    if (strchr(file, '/')) return execve(file, argv, envp);
    const char *p = getenv("PATH");
    char dir[PATH_MAX];
    int last = ENOENT;
    while (p && *p) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len + strlen(file) + 2 < sizeof dir) {
            memcpy(dir, p, len);
            snprintf(dir + len, sizeof dir - len, "/%s", file);
            if (access(dir, X_OK) == 0) { execve(dir, argv, envp); last = errno; }
        }
        p = end ? end + 1 : NULL;
    }
    errno = last;
    return -1;
}

int execvp(const char *file, char *const argv[]) { return execvpe(file, argv, environ); }

/* ---- read-only phone dirs and the disk-full fault ------------------------ */

static int in_dir_list(const char *abs, const char *list) {
    char dir[PATH_MAX];
    while (list && *list) {
        const char *end = strchr(list, ':');
        size_t len = end ? (size_t)(end - list) : strlen(list);
        if (len && len < sizeof dir) {
            memcpy(dir, list, len);
            dir[len] = '\0';
            if (has_prefix_dir(abs, dir)) return 1;
        }
        list = end ? end + 1 : NULL;
    }
    return 0;
}

/* 0 when a write to path may go ahead, else the errno the phone would give. */
static int write_denied(int dirfd, const char *path) {
    const char *full = getenv("JCW_EMU_FULL_DIR"), *ro = getenv("JCW_EMU_READONLY");
    char abs[2 * PATH_MAX + 2], base[PATH_MAX];
    if (!path || ((!full || !*full) && (!ro || !*ro))) return 0;
    if (path[0] == '/') {
        snprintf(abs, sizeof abs, "%s", path);
    } else {
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, base, sizeof base - 1);
            if (n < 0) return 0;
            base[n] = '\0';
        }
        snprintf(abs, sizeof abs, "%s/%s", base, path);
    }
    if (ro && in_dir_list(abs, ro)) return EACCES;
    if (full && in_dir_list(abs, full)) return ENOSPC;
    return 0;
}

#define WRITE_FLAGS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*mkdirat_fn)(int, const char *, mode_t);
typedef FILE *(*fopen_fn)(const char *, const char *);

static int do_openat(const char *sym, int dirfd, const char *path, int flags, mode_t mode) {
    int denied = (flags & WRITE_FLAGS) ? write_denied(dirfd, path) : 0;
    if (denied) { errno = denied; return -1; }
    openat_fn fn = (openat_fn)dlsym(RTLD_NEXT, sym);
    return fn(dirfd, path, flags, mode);
}

#define MODE_ARG(flags) mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_openat("openat", AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_openat("openat64", AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_openat("openat", dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_openat("openat64", dirfd, path, flags, mode); }
int creat(const char *path, mode_t mode) { return do_openat("openat", AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) { return do_openat("openat64", AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int mkdirat(int dirfd, const char *path, mode_t mode) {
    int denied = write_denied(dirfd, path);
    if (denied) { errno = denied; return -1; }
    return ((mkdirat_fn)dlsym(RTLD_NEXT, "mkdirat"))(dirfd, path, mode);
}
int mkdir(const char *path, mode_t mode) { return mkdirat(AT_FDCWD, path, mode); }

static FILE *do_fopen(const char *sym, const char *path, const char *how) {
    int denied = strpbrk(how, "wa+") ? write_denied(AT_FDCWD, path) : 0;
    if (denied) { errno = denied; return NULL; }
    return ((fopen_fn)dlsym(RTLD_NEXT, sym))(path, how);
}
FILE *fopen(const char *path, const char *how) { return do_fopen("fopen", path, how); }
FILE *fopen64(const char *path, const char *how) { return do_fopen("fopen64", path, how); }

/* Removing or renaming the phone's read-only files (not a full disk) is refused too. */
typedef int (*unlinkat_fn)(int, const char *, int);
typedef int (*renameat_fn)(int, const char *, int, const char *);
static int removal_denied(int dirfd, const char *path) { return write_denied(dirfd, path) == EACCES; }

int unlinkat(int dirfd, const char *path, int flags) {
    if (removal_denied(dirfd, path)) { errno = EACCES; return -1; }
    return ((unlinkat_fn)dlsym(RTLD_NEXT, "unlinkat"))(dirfd, path, flags);
}
int unlink(const char *path) { return unlinkat(AT_FDCWD, path, 0); }
int rmdir(const char *path) { return unlinkat(AT_FDCWD, path, AT_REMOVEDIR); }
int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    if (removal_denied(olddirfd, oldpath) || removal_denied(newdirfd, newpath)) { errno = EACCES; return -1; }
    return ((renameat_fn)dlsym(RTLD_NEXT, "renameat"))(olddirfd, oldpath, newdirfd, newpath);
}
int rename(const char *oldpath, const char *newpath) { return renameat(AT_FDCWD, oldpath, AT_FDCWD, newpath); }
