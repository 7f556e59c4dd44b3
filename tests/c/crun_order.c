/*
 * Runs a confidential workload the way crun's krun handler does for SEV
 * (containers/crun src/libcrun/handlers/krun.c): krun_create_ctx when the library is
 * loaded, then in libkrun_exec krun_set_log_level, krun_set_root_disk,
 * krun_set_tee_config_file, krun_set_vm_config (crun's own vCPU/RAM values, which the TEE
 * config overrides) and krun_start_enter, which only returns on failure. No krun_set_exec:
 * the workload comes from /.krun_config.json inside the encrypted disk.
 *
 * Usage: crun_order DISK TEE_CONFIG. Exits with the workload's status, or 125 when a call
 * fails. Prints CRUN_ORDER=<the calls made> before entering the VM.
 */
#include <stdio.h>
#include <string.h>

#include <libkrun.h>

static char order[256];

#define CALL(name, expr)                                                           \
    do {                                                                           \
        int32_t rc_ = (expr);                                                      \
        strncat(order, order[0] ? " " name : name, sizeof(order) - strlen(order) - 1); \
        if (rc_ < 0) {                                                             \
            fprintf(stderr, "%s failed: %s\n", name, strerror(-rc_));              \
            return 125;                                                            \
        }                                                                          \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DISK TEE_CONFIG\n", argv[0]);
        return 2;
    }
    int32_t ctx = krun_create_ctx();
    CALL("krun_create_ctx", ctx);
    CALL("krun_set_log_level", krun_set_log_level(3));
    CALL("krun_set_root_disk", krun_set_root_disk((uint32_t)ctx, argv[1]));
    CALL("krun_set_tee_config_file", krun_set_tee_config_file((uint32_t)ctx, argv[2]));
    /* crun: CPU affinity (at most 16) and the OCI memory limit or 1024 MiB. */
    CALL("krun_set_vm_config", krun_set_vm_config((uint32_t)ctx, 4, 1024));
    printf("CRUN_ORDER=%s krun_start_enter\n", order);
    fflush(stdout);
    int32_t rc = krun_start_enter((uint32_t)ctx);
    fprintf(stderr, "krun_start_enter failed: %s\n", strerror(rc < 0 ? -rc : rc));
    return 125;
}
