/*
 * The calls of crun 1.6-1.20's krun handler (Debian 12's crun 1.8.1): the library is
 * dlopened on the host, then, inside the container after pivot_root, krun_create_ctx,
 * krun_set_log_level(1), krun_set_root_disk("/disk.img"),
 * krun_set_tee_config_file("/krun-sev.json") and krun_start_enter. chroot(ROOT) stands in for
 * pivot_root: afterwards the host's bundle directory is out of sight. Like crun, it replaces
 * the environment after dlopen with the container's (the OCI process.env): the NAME=VALUE
 * arguments after ROOT, none if there are none.
 *
 * Usage: crun_chroot_order ROOT [NAME=VALUE...]. Prints START_ENTER=<negative errno> when
 * krun_start_enter returns (only for a context that cannot launch: once the launch begins
 * the process ends with the workload's status, or 125 when the launch fails), or
 * CALL_FAILED=<name> for an earlier failure.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int32_t (*create_fn)(void);
typedef int32_t (*level_fn)(uint32_t);
typedef int32_t (*path_fn)(uint32_t, const char *);
typedef int32_t (*start_fn)(uint32_t);

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s ROOT [NAME=VALUE...]\n", argv[0]);
        return 2;
    }
    void *lib = dlopen("libkrun-sev.so.1", RTLD_NOW);
    if (lib == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    create_fn create = (create_fn)dlsym(lib, "krun_create_ctx");
    level_fn level = (level_fn)dlsym(lib, "krun_set_log_level");
    path_fn root_disk = (path_fn)dlsym(lib, "krun_set_root_disk");
    path_fn tee_config = (path_fn)dlsym(lib, "krun_set_tee_config_file");
    start_fn start = (start_fn)dlsym(lib, "krun_start_enter");
    if (!create || !level || !root_disk || !tee_config || !start) {
        fprintf(stderr, "missing symbol\n");
        return 2;
    }
    if (clearenv() != 0) {
        perror("clearenv");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (putenv(argv[i]) != 0) {
            perror("putenv");
            return 2;
        }
    }
    if (chroot(argv[1]) != 0 || chdir("/") != 0) {
        perror("chroot");
        return 2;
    }
    int32_t ctx = create();
    if (ctx < 0 || level(1) < 0) {
        printf("CALL_FAILED=krun_create_ctx\n");
        return 1;
    }
    if (root_disk((uint32_t)ctx, "/disk.img") < 0) {
        printf("CALL_FAILED=krun_set_root_disk\n");
        return 1;
    }
    if (tee_config((uint32_t)ctx, "/krun-sev.json") < 0) {
        printf("CALL_FAILED=krun_set_tee_config_file\n");
        return 1;
    }
    int32_t rc = start((uint32_t)ctx);
    printf("START_ENTER=%d\n", rc);
    return 0;
}
