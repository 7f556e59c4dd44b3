/*
 * Every name of libkrun.h that crun's krun handler (containers/crun
 * src/libcrun/handlers/krun.c, 1.8.1 to HEAD) uses and that libkrun-sev provides, used the
 * way crun uses it; docs/crun-podman.md lists them per crun version. Compiled with -Werror
 * by tests/c/run.sh (make c-api-test), so a missing or renamed name, another value than
 * upstream libkrun's header has, or a function whose type differs from the pointer crun
 * stores its dlsym result in fails the build. At run time every KRUN_LOG_LEVEL_* is passed to
 * krun_set_log_level.
 *
 * Prints CRUN_NAMES_OK and exits 0 when every check passes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>

#include <libkrun.h>

/* crun 1.28+ defines this only when the header does not (krun.c, "older libkrun
 * versions"); with our header it must be the header's. */
#ifndef NET_FLAG_DHCP_CLIENT
#error "NET_FLAG_DHCP_CLIENT missing from libkrun.h"
#endif

/* Upstream libkrun's values (include/libkrun.h). */
_Static_assert(KRUN_LOG_LEVEL_OFF == 0, "KRUN_LOG_LEVEL_OFF");
_Static_assert(KRUN_LOG_LEVEL_ERROR == 1, "KRUN_LOG_LEVEL_ERROR");
_Static_assert(KRUN_LOG_LEVEL_WARN == 2, "KRUN_LOG_LEVEL_WARN");
_Static_assert(KRUN_LOG_LEVEL_INFO == 3, "KRUN_LOG_LEVEL_INFO");
_Static_assert(KRUN_LOG_LEVEL_DEBUG == 4, "KRUN_LOG_LEVEL_DEBUG");
_Static_assert(KRUN_LOG_LEVEL_TRACE == 5, "KRUN_LOG_LEVEL_TRACE");
_Static_assert(VIRGLRENDERER_USE_EGL == 0x1, "VIRGLRENDERER_USE_EGL");
_Static_assert(VIRGLRENDERER_THREAD_SYNC == 0x2, "VIRGLRENDERER_THREAD_SYNC");
_Static_assert(VIRGLRENDERER_USE_GLX == 0x4, "VIRGLRENDERER_USE_GLX");
_Static_assert(VIRGLRENDERER_USE_SURFACELESS == 0x8, "VIRGLRENDERER_USE_SURFACELESS");
_Static_assert(VIRGLRENDERER_USE_GLES == 0x10, "VIRGLRENDERER_USE_GLES");
_Static_assert(VIRGLRENDERER_USE_EXTERNAL_BLOB == 0x20, "VIRGLRENDERER_USE_EXTERNAL_BLOB");
_Static_assert(VIRGLRENDERER_VENUS == 0x40, "VIRGLRENDERER_VENUS");
_Static_assert(VIRGLRENDERER_NO_VIRGL == 0x80, "VIRGLRENDERER_NO_VIRGL");
_Static_assert(VIRGLRENDERER_USE_ASYNC_FENCE_CB == 0x100, "VIRGLRENDERER_USE_ASYNC_FENCE_CB");
_Static_assert(VIRGLRENDERER_RENDER_SERVER == 0x200, "VIRGLRENDERER_RENDER_SERVER");
_Static_assert(VIRGLRENDERER_DRM == 0x400, "VIRGLRENDERER_DRM");
_Static_assert(NET_FLAG_VFKIT == 0x1, "NET_FLAG_VFKIT");
_Static_assert(NET_FLAG_DHCP_CLIENT == 0x2, "NET_FLAG_DHCP_CLIENT");
_Static_assert(NET_FEATURE_CSUM == 0x1, "NET_FEATURE_CSUM");
_Static_assert(NET_FEATURE_GUEST_CSUM == 0x2, "NET_FEATURE_GUEST_CSUM");
_Static_assert(NET_FEATURE_GUEST_TSO4 == 0x80, "NET_FEATURE_GUEST_TSO4");
_Static_assert(NET_FEATURE_GUEST_TSO6 == 0x100, "NET_FEATURE_GUEST_TSO6");
_Static_assert(NET_FEATURE_GUEST_UFO == 0x400, "NET_FEATURE_GUEST_UFO");
_Static_assert(NET_FEATURE_HOST_TSO4 == 0x800, "NET_FEATURE_HOST_TSO4");
_Static_assert(NET_FEATURE_HOST_TSO6 == 0x1000, "NET_FEATURE_HOST_TSO6");
_Static_assert(NET_FEATURE_HOST_UFO == 0x4000, "NET_FEATURE_HOST_UFO");
/* CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_UFO | HOST_TSO4 | HOST_UFO; a macro that expands
 * to an unparenthesized expression would give another value here. */
_Static_assert(2 * COMPAT_NET_FEATURES == 2 * 0x4c83, "COMPAT_NET_FEATURES");

/* crun 1.23-1.26's GPU flags (libkrun_enable_virtio_gpu). */
static const uint32_t crun_virgl_flags = VIRGLRENDERER_NO_VIRGL | VIRGLRENDERER_RENDER_SERVER |
                                         VIRGLRENDERER_VENUS | VIRGLRENDERER_THREAD_SYNC |
                                         VIRGLRENDERER_USE_ASYNC_FENCE_CB;

/* crun 1.28+: krun_add_net_unixstream (ctx, NULL, fd, mac, COMPAT_NET_FEATURES,
 * NET_FLAG_DHCP_CLIENT), through a pointer of the type crun declares, which it gets from
 * dlsym. */
typedef int32_t (*crun_add_net_unixstream_fn)(uint32_t ctx_id, const char *c_path, int fd,
                                              uint8_t *const c_mac, uint32_t features,
                                              uint32_t flags);

int main(void)
{
    /* The functions crun looks up with dlsym and this library exports, stored in pointers
     * of the types crun declares (1.8.1's krun_set_exec; 1.27+ only use it for AWS
     * Nitro). */
    int32_t (*create_ctx)() = krun_create_ctx;
    int32_t (*set_log_level)(uint32_t level) = krun_set_log_level;
    int (*start_enter)(uint32_t ctx_id) = krun_start_enter;
    int32_t (*set_vm_config)(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib) =
        krun_set_vm_config;
    int32_t (*set_root)(uint32_t ctx_id, const char *root_path) = krun_set_root;
    int32_t (*set_root_disk)(uint32_t ctx_id, const char *disk_path) = krun_set_root_disk;
    int32_t (*set_workdir)(uint32_t ctx_id, const char *workdir_path) = krun_set_workdir;
    int32_t (*set_exec)(uint32_t ctx_id, const char *exec_path, char *const argv[],
                        char *const envp[]) = krun_set_exec;
    int32_t (*set_tee_config_file)(uint32_t ctx_id, const char *file_path) =
        krun_set_tee_config_file;
    crun_add_net_unixstream_fn add_net = krun_add_net_unixstream;
    const void *used[] = {(const void *)create_ctx,  (const void *)start_enter,
                          (const void *)set_vm_config, (const void *)set_root,
                          (const void *)set_root_disk, (const void *)set_workdir,
                          (const void *)set_exec,    (const void *)set_tee_config_file,
                          (const void *)add_net};
    for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
        if (used[i] == NULL) {
            fprintf(stderr, "function %zu is NULL\n", i);
            return 1;
        }
    }

    /* crun 1.27+: the log level follows crun's verbosity. */
    const uint32_t levels[] = {KRUN_LOG_LEVEL_OFF,  KRUN_LOG_LEVEL_ERROR, KRUN_LOG_LEVEL_WARN,
                               KRUN_LOG_LEVEL_INFO, KRUN_LOG_LEVEL_DEBUG, KRUN_LOG_LEVEL_TRACE};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        int32_t rc = set_log_level(levels[i]);
        if (rc != 0) {
            fprintf(stderr, "krun_set_log_level(%u) = %d\n", (unsigned)levels[i], rc);
            return 1;
        }
    }
    int32_t rc = set_log_level(KRUN_LOG_LEVEL_TRACE + 1);
    if (rc != -EINVAL) {
        fprintf(stderr, "krun_set_log_level(KRUN_LOG_LEVEL_TRACE + 1) = %d\n", rc);
        return 1;
    }
    set_log_level(KRUN_LOG_LEVEL_ERROR);
    if ((crun_virgl_flags & VIRGLRENDERER_RENDER_SERVER) == 0) {
        fprintf(stderr, "flag arithmetic\n");
        return 1;
    }
    printf("CRUN_NAMES_OK\n");
    return 0;
}
