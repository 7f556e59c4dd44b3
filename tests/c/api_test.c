/*
 * Exercises the installed libkrun-sev from C: linked through pkg-config, and dlopened by
 * SONAME the way crun's krun handler loads it.
 *
 * Usage: api_test TEE_CONFIG_DIR DISK_IMAGE
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libkrun.h>

static int failures;

#define CHECK_EQ(expr, want)                                                              \
    do {                                                                                  \
        long got_ = (long)(expr);                                                         \
        if (got_ != (long)(want)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: %s = %ld, want %ld\n", __FILE__, __LINE__, #expr, \
                    got_, (long)(want));                                                  \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

static void linked_api(const char *cfg_dir, const char *disk)
{
    char path[4096];

    CHECK_EQ(krun_set_log_level(1), 0);
    CHECK_EQ(krun_set_log_level(9), -EINVAL);

    int32_t ctx = krun_create_ctx();
    if (ctx < 0) {
        fprintf(stderr, "FAIL krun_create_ctx = %d\n", ctx);
        failures++;
        return;
    }
    CHECK_EQ(krun_set_vm_config(ctx, 2, 1024), 0);
    CHECK_EQ(krun_set_vm_config(ctx, 0, 1024), -EINVAL);
    CHECK_EQ(krun_set_vm_config(ctx + 1000, 1, 512), -ENOENT);
    CHECK_EQ(krun_set_root(ctx, "/"), -ENOTSUP);

    char *const empty[] = {NULL};
    char *const ports[] = {"8080:80", "2222:22", NULL};
    char *const dup_ports[] = {"8080:80", "8080:81", NULL};
    char *const bad_ports[] = {"80", NULL};
    CHECK_EQ(krun_set_port_map(ctx, NULL), 0);
    CHECK_EQ(krun_set_port_map(ctx, empty), 0);
    CHECK_EQ(krun_set_port_map(ctx, ports), 0);
    CHECK_EQ(krun_set_port_map(ctx, dup_ports), -EINVAL);
    CHECK_EQ(krun_set_port_map(ctx, bad_ports), -EINVAL);

    /* krun_add_net_unixstream: exactly one of path and fd, a unicast MAC, flags 0 or
     * NET_FLAG_DHCP_CLIENT, one device per context. */
    uint8_t mac[6] = {0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee};
    uint8_t multicast[6] = {0x01, 0x00, 0x5e, 0x00, 0x00, 0x01};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        failures++;
    } else {
        CHECK_EQ(krun_add_net_unixstream(ctx, "/tmp/passt.sock", sv[0], mac, 0, 0), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, -1, mac, 0, 0), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, sv[0], NULL, 0, 0), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, sv[0], multicast, 0, 0), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, sv[0], mac, 0, NET_FLAG_VFKIT), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, sv[0], mac, 0, 1u << 7), -EINVAL);
        CHECK_EQ(krun_add_net_unixstream(ctx + 1000, NULL, sv[0], mac, 0, 0), -ENOENT);
        CHECK_EQ(krun_add_net_unixstream(ctx, "", -1, mac, 0, 0), -EINVAL);
        /* crun 1.28+'s call; the library owns sv[0] from now on. */
        CHECK_EQ(krun_add_net_unixstream(ctx, NULL, sv[0], mac, COMPAT_NET_FEATURES,
                                         NET_FLAG_DHCP_CLIENT),
                 0);
        CHECK_EQ(krun_add_net_unixstream(ctx, "/tmp/passt.sock", -1, mac, 0, 0), -EEXIST);
        close(sv[1]);
    }

    char *const rlimits[] = {"RLIMIT_NOFILE=1024:4096", "6=100:200", NULL};
    char *const bad_rlimits[] = {"NOFILE=10", NULL};
    CHECK_EQ(krun_set_rlimits(ctx, rlimits), 0);
    CHECK_EQ(krun_set_rlimits(ctx, bad_rlimits), -EINVAL);
    CHECK_EQ(krun_set_rlimits(ctx, NULL), -EINVAL);

    char *const argv[] = {"-c", "echo hello", NULL};
    char *const envp[] = {"HOME=/root", NULL};
    CHECK_EQ(krun_set_exec(ctx, "/bin/sh", argv, envp), 0);
    CHECK_EQ(krun_set_exec(ctx, "/bin/sh", argv, NULL), 0);
    CHECK_EQ(krun_set_exec(ctx, NULL, argv, envp), -EINVAL);
    CHECK_EQ(krun_set_env(ctx, NULL), 0);
    CHECK_EQ(krun_set_workdir(ctx, "/srv"), 0);
    CHECK_EQ(krun_set_workdir(ctx, NULL), -EINVAL);

    /* libkrun-sev refuses to start without a TEE config. */
    CHECK_EQ(krun_set_root_disk(ctx, disk), 0);
    CHECK_EQ(krun_start_enter(ctx), -EINVAL);

    snprintf(path, sizeof(path), "%s/snp.json", cfg_dir);
    CHECK_EQ(krun_set_tee_config_file(ctx, path), 0);
    CHECK_EQ(krun_set_tee_config_file(ctx, "/nonexistent.json"), -ENOENT);
    /* crun sets the VM config after the TEE config; it must still succeed. */
    CHECK_EQ(krun_set_vm_config(ctx, 16, 1024), 0);
    CHECK_EQ(krun_free_ctx(ctx), 0);
    CHECK_EQ(krun_free_ctx(ctx), -ENOENT);
}

/* What crun's krun handler does: dlopen by SONAME, dlsym what it calls. */
static void crun_style_dlopen(void)
{
    static const char *const symbols[] = {
        "krun_set_log_level",   "krun_create_ctx",    "krun_free_ctx",
        "krun_set_vm_config",   "krun_set_root_disk", "krun_set_data_disk",
        "krun_set_port_map",    "krun_set_rlimits",   "krun_set_workdir",
        "krun_set_exec",        "krun_set_env",       "krun_set_tee_config_file",
        "krun_start_enter",     "krun_set_root",      "krun_set_mapped_volumes",
        "krun_add_net_unixstream",
    };
    void *handle = dlopen("libkrun-sev.so.1", RTLD_NOW);
    if (handle == NULL) {
        fprintf(stderr, "FAIL dlopen(libkrun-sev.so.1): %s\n", dlerror());
        failures++;
        return;
    }
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        if (dlsym(handle, symbols[i]) == NULL) {
            fprintf(stderr, "FAIL dlsym(%s)\n", symbols[i]);
            failures++;
        }
    }
    int32_t (*create)(void) = (int32_t(*)(void))dlsym(handle, "krun_create_ctx");
    if (create != NULL && create() < 0) {
        fprintf(stderr, "FAIL krun_create_ctx through dlopen\n");
        failures++;
    }
    dlclose(handle);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TEE_CONFIG_DIR DISK_IMAGE\n", argv[0]);
        return 2;
    }
    linked_api(argv[1], argv[2]);
    crun_style_dlopen();
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("C API test passed\n");
    return 0;
}
