/*
 * Runs a confidential workload with the network crun 1.22+ gives it with the krun.use_passt
 * annotation (containers/crun src/libcrun/handlers/krun.c): a unix stream socketpair,
 * `passt --fd N` on one end, and krun_add_net_unixstream(ctx, NULL, fd, mac, features,
 * NET_FLAG_DHCP_CLIENT) on the other, retried with flags 0 on -EINVAL. Otherwise the calls
 * of crun_order.c.
 *
 * Usage: net_passt DISK TEE_CONFIG PASST_TCP_SPEC (passt's -t, e.g. 18081:8081). Exits with
 * the workload's status, or 125 when a call fails. Prints NET_PASST_PID=<passt's pid> and
 * NET_CALL=<krun_add_net_unixstream's return> before entering the VM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libkrun.h>

/* crun's feature set (it defines these itself; libkrun.h has the same values). */
#ifndef COMPAT_NET_FEATURES
#define COMPAT_NET_FEATURES ((1 << 0) | (1 << 1) | (1 << 7) | (1 << 10) | (1 << 11) | (1 << 14))
#endif

#define CHECK(name, expr)                                                         \
    do {                                                                          \
        int32_t rc_ = (expr);                                                     \
        if (rc_ < 0) {                                                            \
            fprintf(stderr, "%s failed: %s\n", name, strerror(-rc_));             \
            return 125;                                                           \
        }                                                                         \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s DISK TEE_CONFIG PASST_TCP_SPEC\n", argv[0]);
        return 2;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        return 125;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 125;
    }
    if (pid == 0) {
        /* passt's end must survive exec. */
        int fd = dup(sv[1]);
        char fdarg[16];
        snprintf(fdarg, sizeof(fdarg), "%d", fd);
        execlp("passt", "passt", "-f", "-e", "-4", "--fd", fdarg, "-t", argv[3], "-u", "none",
               (char *)NULL);
        perror("exec passt");
        _exit(127);
    }
    close(sv[1]);
    printf("NET_PASST_PID=%d\n", (int)pid);

    int32_t ctx = krun_create_ctx();
    CHECK("krun_create_ctx", ctx);
    CHECK("krun_set_log_level", krun_set_log_level(3));
    CHECK("krun_set_root_disk", krun_set_root_disk((uint32_t)ctx, argv[1]));
    CHECK("krun_set_tee_config_file", krun_set_tee_config_file((uint32_t)ctx, argv[2]));
    CHECK("krun_set_vm_config", krun_set_vm_config((uint32_t)ctx, 4, 1024));
    uint8_t mac[6] = {0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee};
    int32_t rc = krun_add_net_unixstream((uint32_t)ctx, NULL, sv[0], mac, COMPAT_NET_FEATURES,
                                         NET_FLAG_DHCP_CLIENT);
    if (rc == -EINVAL)
        rc = krun_add_net_unixstream((uint32_t)ctx, NULL, sv[0], mac, COMPAT_NET_FEATURES, 0);
    printf("NET_CALL=%d\n", rc);
    fflush(stdout);
    CHECK("krun_add_net_unixstream", rc);
    rc = krun_start_enter((uint32_t)ctx);
    fprintf(stderr, "krun_start_enter failed: %s\n", strerror(rc < 0 ? -rc : rc));
    return 125;
}
