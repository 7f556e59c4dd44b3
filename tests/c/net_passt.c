/*
 * Runs a confidential workload with a network, in one of two ways:
 *
 *   fd SPEC       crun 1.28+'s krun.use_passt sequence (containers/crun
 *                 src/libcrun/handlers/krun.c): a unix stream socketpair, `passt --fd N -t SPEC`
 *                 on one end, and krun_add_net_unixstream(ctx, NULL, fd, mac,
 *                 COMPAT_NET_FEATURES, NET_FLAG_DHCP_CLIENT) on the other, retried with flags 0
 *                 on -EINVAL.
 *   default MAP   no network call: krun_set_port_map(ctx, {MAP, NULL}) only, so the library
 *                 starts passt itself and forwards the port map's ports through it.
 *
 * Otherwise the calls of crun_order.c. Usage: net_passt DISK TEE_CONFIG fd|default SPEC.
 * Exits with the workload's status, or 125 when a call fails. In fd mode prints
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

#define CHECK(name, expr)                                                         \
    do {                                                                          \
        int32_t rc_ = (expr);                                                     \
        if (rc_ < 0) {                                                            \
            fprintf(stderr, "%s failed: %s\n", name, strerror(-rc_));             \
            return 125;                                                           \
        }                                                                         \
    } while (0)

/* Starts passt on one end of a socketpair; returns the other end, or -1. */
static int start_passt(const char *tcp_spec)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        /* passt's end must survive exec. */
        int fd = dup(sv[1]);
        char fdarg[16];
        snprintf(fdarg, sizeof(fdarg), "%d", fd);
        execlp("passt", "passt", "-f", "-q", "-4", "--fd", fdarg, "-t", tcp_spec, "-u", "none",
               (char *)NULL);
        perror("exec passt");
        _exit(127);
    }
    close(sv[1]);
    return sv[0];
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[3], "fd") != 0 && strcmp(argv[3], "default") != 0)) {
        fprintf(stderr, "usage: %s DISK TEE_CONFIG fd|default SPEC\n", argv[0]);
        return 2;
    }
    int explicit_fd = strcmp(argv[3], "fd") == 0;
    int fd = -1;
    if (explicit_fd && (fd = start_passt(argv[4])) < 0)
        return 125;

    int32_t ctx = krun_create_ctx();
    CHECK("krun_create_ctx", ctx);
    CHECK("krun_set_log_level", krun_set_log_level(3));
    CHECK("krun_set_root_disk", krun_set_root_disk((uint32_t)ctx, argv[1]));
    CHECK("krun_set_tee_config_file", krun_set_tee_config_file((uint32_t)ctx, argv[2]));
    CHECK("krun_set_vm_config", krun_set_vm_config((uint32_t)ctx, 4, 1024));
    if (explicit_fd) {
        uint8_t mac[6] = {0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee};
        int32_t rc = krun_add_net_unixstream((uint32_t)ctx, NULL, fd, mac, COMPAT_NET_FEATURES,
                                             NET_FLAG_DHCP_CLIENT);
        if (rc == -EINVAL)
            rc = krun_add_net_unixstream((uint32_t)ctx, NULL, fd, mac, COMPAT_NET_FEATURES, 0);
        printf("NET_CALL=%d\n", rc);
        fflush(stdout);
        CHECK("krun_add_net_unixstream", rc);
    } else {
        char *const port_map[] = {argv[4], NULL};
        CHECK("krun_set_port_map", krun_set_port_map((uint32_t)ctx, port_map));
    }
    int32_t rc = krun_start_enter((uint32_t)ctx);
    fprintf(stderr, "krun_start_enter failed: %s\n", strerror(rc < 0 ? -rc : rc));
    return 125;
}
