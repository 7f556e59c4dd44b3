/*
 * libkrun-sev: run one process inside an AMD SEV, SEV-ES or SEV-SNP microVM.
 *
 * The guest boots from a raw, LUKS-encrypted disk image. Its key is released by a key broker
 * only after the broker has verified the launch measurement (remote attestation). The
 * workload's command line, environment and working directory normally come from
 * /.krun_config.json inside the encrypted disk, not from the host.
 *
 * Link with `pkg-config --cflags --libs libkrun-sev`; the library's SONAME is
 * libkrun-sev.so.1.
 *
 * Conventions for every function:
 * - Return 0 (or a context ID) on success and a negative errno value on failure. Every
 *   failure is also logged on stderr with the function name and the reason.
 * - -ENOENT: "ctx_id" does not name a live context.
 * - -EINVAL: a NULL pointer where one is required, a string that is not UTF-8, or a value
 *   that fails validation (the log says which).
 * - String arrays ("char *const x[]") are terminated by a NULL pointer and may hold at most
 *   65536 entries.
 * - A rejected call leaves the context unchanged. Calls are thread-safe.
 * - The library never aborts or unwinds into the caller: an internal error returns -EFAULT.
 */
#ifndef LIBKRUN_SEV_H
#define LIBKRUN_SEV_H

#include <inttypes.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Sets the log level of the library.
 *
 * Arguments:
 *  "level" - KRUN_LOG_LEVEL_OFF (0), _ERROR (1), _WARN (2, the default), _INFO (3),
 *            _DEBUG (4) or _TRACE (5).
 *
 * When the environment variable RUST_LOG is set (env_logger syntax, e.g. "debug" or
 * "krun_sev::vmm=trace"), it takes precedence over "level". May be called any number of times.
 *
 * Returns:
 *  Zero on success, -EINVAL for a level above 5.
 */
int32_t krun_set_log_level(uint32_t level);

/*
 * Constants of upstream libkrun's header (containers/libkrun include/libkrun.h), with its
 * values, so that programs written against that header compile here. crun's krun handler
 * uses KRUN_LOG_LEVEL_* (1.27 and later), VIRGLRENDERER_* (1.23 and later) and
 * COMPAT_NET_FEATURES (1.28 and later); docs/crun-podman.md lists which names each crun
 * version uses.
 *
 * The log levels are the values krun_set_log_level accepts.
 */
#define KRUN_LOG_LEVEL_OFF 0
#define KRUN_LOG_LEVEL_ERROR 1
#define KRUN_LOG_LEVEL_WARN 2
#define KRUN_LOG_LEVEL_INFO 3
#define KRUN_LOG_LEVEL_DEBUG 4
#define KRUN_LOG_LEVEL_TRACE 5

/*
 * virglrenderer flags of upstream's krun_set_gpu_options. libkrun-sev has no GPU and does not
 * export krun_set_gpu_options (crun skips the GPU when that symbol is missing); the flags are
 * defined for source compatibility only.
 */
#define VIRGLRENDERER_USE_EGL (1 << 0)
#define VIRGLRENDERER_THREAD_SYNC (1 << 1)
#define VIRGLRENDERER_USE_GLX (1 << 2)
#define VIRGLRENDERER_USE_SURFACELESS (1 << 3)
#define VIRGLRENDERER_USE_GLES (1 << 4)
#define VIRGLRENDERER_USE_EXTERNAL_BLOB (1 << 5)
#define VIRGLRENDERER_VENUS (1 << 6)
#define VIRGLRENDERER_NO_VIRGL (1 << 7)
#define VIRGLRENDERER_USE_ASYNC_FENCE_CB (1 << 8)
#define VIRGLRENDERER_RENDER_SERVER (1 << 9)
#define VIRGLRENDERER_DRM (1 << 10)

/*
 * virtio-net flags and features of krun_add_net_unixstream (the feature bits are those of
 * Linux's uapi/linux/virtio_net.h), with upstream's values. krun_add_net_unixstream accepts
 * NET_FLAG_DHCP_CLIENT; NET_FLAG_VFKIT belongs to upstream's krun_add_net_unixgram, which
 * libkrun-sev does not export. The NET_FEATURE_* offloads are accepted and not offered to
 * the guest (the device has no offloads).
 */
#define NET_FLAG_VFKIT (1 << 0)
#define NET_FLAG_DHCP_CLIENT (1 << 1)
#define NET_FEATURE_CSUM (1 << 0)
#define NET_FEATURE_GUEST_CSUM (1 << 1)
#define NET_FEATURE_GUEST_TSO4 (1 << 7)
#define NET_FEATURE_GUEST_TSO6 (1 << 8)
#define NET_FEATURE_GUEST_UFO (1 << 10)
#define NET_FEATURE_HOST_TSO4 (1 << 11)
#define NET_FEATURE_HOST_TSO6 (1 << 12)
#define NET_FEATURE_HOST_UFO (1 << 14)
#define COMPAT_NET_FEATURES                                                                 \
    (NET_FEATURE_CSUM | NET_FEATURE_GUEST_CSUM | NET_FEATURE_GUEST_TSO4 |                   \
     NET_FEATURE_GUEST_UFO | NET_FEATURE_HOST_TSO4 | NET_FEATURE_HOST_UFO)

/*
 * Creates a configuration context.
 *
 * Returns:
 *  The context ID (>= 0) on success or a negative error number on failure (-ENOMEM when no
 *  ID is free).
 */
int32_t krun_create_ctx(void);

/*
 * Frees an existing configuration context.
 *
 * Arguments:
 *  "ctx_id" - the configuration context ID.
 *
 * Returns:
 *  Zero on success, -ENOENT for an unknown context.
 */
int32_t krun_free_ctx(uint32_t ctx_id);

/*
 * Sets the number of vCPUs and the amount of RAM of the microVM.
 *
 * In a confidential launch the TEE config's "cpus" and "ram_mib" win over these values at
 * krun_start_enter, because the launch measurement depends on them; this call still succeeds
 * when made after krun_set_tee_config_file (crun does that).
 *
 * Arguments:
 *  "ctx_id"    - the configuration context ID.
 *  "num_vcpus" - the number of vCPUs, 1 to 32 (the guest kernel's limit).
 *  "ram_mib"   - the amount of RAM in MiB, 1 to 1048576.
 *
 * Returns:
 *  Zero on success, -EINVAL for a value out of range, -ENOENT for an unknown context.
 */
int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib);

/*
 * Not available in libkrun-sev: a confidential guest boots from an encrypted disk image (see
 * krun_set_root_disk). Kept so that programs written for libkrun link.
 *
 * Returns:
 *  -ENOTSUP (or -ENOENT for an unknown context). "root_path" is not read.
 */
int32_t krun_set_root(uint32_t ctx_id, const char *root_path);

/*
 * Sets the raw disk image holding the guest's root file system; the guest sees it read-write
 * as /dev/vda. For a confidential workload this is the LUKS-encrypted image with the "KRUN"
 * footer (buildah mkcw's disk.img, or `krun-sev mkcw`).
 *
 * Arguments:
 *  "ctx_id"    - the configuration context ID.
 *  "disk_path" - path of the image. It is opened at krun_start_enter; a missing or unreadable
 *                file makes krun_start_enter fail with the errno of the open.
 *
 * Returns:
 *  Zero on success, -EINVAL for a NULL, empty or non-UTF-8 path, -ENOENT for an unknown
 *  context.
 */
int32_t krun_set_root_disk(uint32_t ctx_id, const char *disk_path);

/*
 * Sets a second raw disk image, seen read-write by the guest as /dev/vdb. The host can read
 * and change it: a confidential workload must encrypt or authenticate what it keeps there.
 *
 * Arguments and return values as krun_set_root_disk.
 */
int32_t krun_set_data_disk(uint32_t ctx_id, const char *disk_path);

/*
 * Not available in libkrun-sev: the host cannot share directories with a confidential guest.
 * Kept so that programs written for libkrun link.
 *
 * Returns:
 *  -ENOTSUP (or -ENOENT for an unknown context). "mapped_volumes" is not read.
 */
int32_t krun_set_mapped_volumes(uint32_t ctx_id, char *const mapped_volumes[]);

/*
 * Configures TCP ports forwarded from the host into the microVM.
 *
 * Arguments:
 *  "ctx_id"   - the configuration context ID.
 *  "port_map" - NULL, or an array of "HOST_PORT:GUEST_PORT" strings (ports 1-65535, each
 *               host port at most once).
 *
 * NULL (the default, also when this function is never called) exposes every TCP port the
 * guest listens on, under the same number; an empty array exposes nothing. Connections travel
 * over virtio-vsock to the guest init, which connects to 127.0.0.1:GUEST_PORT in the guest.
 *
 * Returns:
 *  Zero on success, -EINVAL for a malformed entry or a repeated host port, -ENOENT for an
 *  unknown context.
 */
int32_t krun_set_port_map(uint32_t ctx_id, char *const port_map[]);

/*
 * Adds the virtio-net device (eth0 in the guest). Its frames travel over a unix stream socket
 * in passt's and QEMU's stream framing: each Ethernet frame preceded by its length as a 32-bit
 * big-endian integer (passt --fd, QEMU -netdev stream). One device per context.
 *
 * Arguments:
 *  "ctx_id"   - the configuration context ID.
 *  "c_path"   - path of a unix stream socket to connect to at krun_start_enter, or NULL.
 *  "fd"       - an already connected unix stream socket, or -1. Exactly one of "c_path" and
 *               "fd" must be given. On success the library owns "fd" (it is closed when the
 *               context is freed or the VM ends); on failure it stays the caller's.
 *  "c_mac"    - the guest's MAC address, 6 bytes (not multicast, not all zero).
 *  "features" - virtio-net feature bits (NET_FEATURE_*) the caller would like; ANDed with
 *               what the device supports, which is currently none of the offloads, so any
 *               value is accepted (crun passes COMPAT_NET_FEATURES).
 *  "flags"    - 0 or NET_FLAG_DHCP_CLIENT. With NET_FLAG_DHCP_CLIENT the guest init asks
 *               DHCP (passt answers it); with 0 the library states the addresses passt
 *               copies from the host: the IPv4 address and prefix of the interface with the
 *               default route, that route's gateway and up to 3 nameservers from
 *               /etc/resolv.conf (if it cannot find them, the guest uses DHCP and the reason
 *               is logged).
 *
 * The network does not change the launch measurement: the network slot is always on the
 * measured kernel command line (a placeholder without a network), and the settings reach the
 * guest unmeasured over vsock port 1029 (docs/measurement.md). The host sees and can change
 * every frame: protect the workload's traffic with TLS (docs/threat-model.md).
 *
 * Without this call the library starts passt itself at krun_start_enter when passt is
 * installed (docs/interfaces.md, "Network"); KRUN_SEV_PASST=none turns that off.
 *
 * Returns:
 *  Zero on success, -EINVAL when both or neither of "c_path" and "fd" are given, "c_mac" is
 *  NULL or not a unicast address, "c_path" is empty or not UTF-8, or "flags" has a bit other
 *  than NET_FLAG_DHCP_CLIENT; -EEXIST when the context already has a network device;
 *  -ENOENT for an unknown context. A path that cannot be connected makes krun_start_enter
 *  fail with the errno of the connect.
 */
int32_t krun_add_net_unixstream(uint32_t ctx_id, const char *c_path, int fd,
                                uint8_t *const c_mac, uint32_t features, uint32_t flags);

/*
 * Sets resource limits applied to the workload before it starts.
 *
 * Arguments:
 *  "ctx_id"  - the configuration context ID.
 *  "rlimits" - an array of "RESOURCE=CUR:MAX" strings. RESOURCE is a Linux resource number
 *              (e.g. "7") or name ("RLIMIT_NOFILE" or "NOFILE", any case); CUR and MAX are
 *              numbers or "unlimited"; CUR may not exceed MAX. Limits from the image config
 *              apply first, these after.
 *
 * Returns:
 *  Zero on success, -EINVAL for NULL or a malformed entry, -ENOENT for an unknown context.
 */
int32_t krun_set_rlimits(uint32_t ctx_id, char *const rlimits[]);

/*
 * Sets the working directory of the workload inside the guest.
 *
 * In a confidential launch, host-supplied exec, environment and working directory are placed
 * in measured guest memory: they change the launch measurement, so a key broker that
 * registered the measurement of the plain image refuses the key. They never silently
 * override /.krun_config.json from the encrypted disk.
 *
 * Arguments:
 *  "ctx_id"       - the configuration context ID.
 *  "workdir_path" - a non-empty path inside the guest's root.
 *
 * Returns:
 *  Zero on success, -EINVAL for a NULL, empty or non-UTF-8 path, -ENOENT for an unknown
 *  context.
 */
int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path);

/*
 * Sets the executable to run inside the microVM, its arguments and its environment. See
 * krun_set_workdir for what this means in a confidential launch.
 *
 * Arguments:
 *  "ctx_id"    - the configuration context ID.
 *  "exec_path" - path of the executable inside the guest's root (non-empty).
 *  "argv"      - NULL (no arguments) or the arguments after argv[0].
 *  "envp"      - NULL to pass the calling process's environment (variables that are not
 *                UTF-8 are left out), or an array of "NAME=VALUE" strings.
 *
 * Returns:
 *  Zero on success, -EINVAL for a NULL or empty exec_path, a non-UTF-8 string or an
 *  environment entry without "NAME=", -ENOENT for an unknown context.
 */
int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, char *const argv[],
                      char *const envp[]);

/*
 * Sets the environment of the workload, as "envp" of krun_set_exec.
 *
 * Returns:
 *  Zero on success, -EINVAL for a non-UTF-8 string or an entry without "NAME=", -ENOENT for
 *  an unknown context.
 */
int32_t krun_set_env(uint32_t ctx_id, char *const envp[]);

/*
 * Reads the TEE config file, which selects the confidential launch and is required by
 * krun_start_enter. The file is read and validated now.
 *
 * Format (the same JSON buildah mkcw writes as /krun-sev.json and in the disk's footer):
 *  {"workload_id": "...", "cpus": 2, "ram_mib": 512, "tee": "snp",
 *   "tee_data": "{\"gen\":\"milan\"}", "attestation_url": "http://kbs:8000"}
 *  - "tee" (case-sensitive): "sev" and "sev-es" launch SEV-ES (the broker's policy goes to
 *    LAUNCH_START unchanged and never changes the launch type), "sev-no-es" plain SEV,
 *    "snp" (or "sev-snp") SEV-SNP.
 *  - "tee_data": a string holding a JSON object: "gen" ("milan" default, "genoa", "turin":
 *    the vCPU model every vCPU presents, measured; on SEV hardware the host CPU must be
 *    that generation, else krun_start_enter fails), "attestation_server_pubkey" ("" or the
 *    SHA-256 of the broker's TLS SubjectPublicKeyInfo in hex: the guest accepts only that
 *    key; needs an https:// URL), SEV: "vendor_chain". For
 *    "snp" it may also hold the SNP launch parameters, all optional: "policy" (integer or
 *    "0x30000"; default 0x30000; bit 17 and SMT set, SINGLE_SOCKET and bits 26-63 clear;
 *    DEBUG is accepted with a warning in the log), "host_data" (64 hex digits or base64 of
 *    32 bytes; reported as HOST_DATA), "id_block" and "id_auth" (base64 of the 96-byte ID
 *    block and 4096-byte ID auth structure, both or neither; the ID block must carry the
 *    launch digest `krun-sev measure` prints and the policy), "author_key_enabled" (bool,
 *    needs "id_auth"). Other TEE types ignore them.
 *  - "attestation_url": the key broker, or "" for none. "tee_data" and "attestation_url"
 *    are required (buildah always writes both). "workload_id", "attestation_url",
 *    "kbs_protocol" and the pin are the launch's binding: they are measured, and the guest
 *    asks only that broker for only that workload's key (register the digest
 *    `krun-sev measure --tee-config FILE` prints).
 *  - optional "kbs_protocol": "reference" (default) or "rcar" (Trustee).
 *  Unknown keys are ignored.
 *
 * Arguments:
 *  "ctx_id"   - the configuration context ID.
 *  "filepath" - path of the file (at most 1 MiB).
 *
 * Returns:
 *  Zero on success; the errno of open/read (e.g. -ENOENT, -EACCES) when the file cannot be
 *  read; -EFBIG above 1 MiB; -EINVAL when the JSON or a field is invalid, including an
 *  invalid SNP launch parameter in "tee_data" (the log names the field or key); -ENOENT for
 *  an unknown context.
 */
int32_t krun_set_tee_config_file(uint32_t ctx_id, const char *filepath);

/*
 * Starts and enters the microVM. The VMM takes over stdin and stdout on behalf of the
 * workload (the terminal is put in raw mode when stdin is a terminal and restored on exit).
 *
 * Before anything starts, the configuration is checked: a missing TEE config ("missing TEE
 * config", -EINVAL), a missing root disk (-EINVAL), or a disk that cannot be opened (the
 * open's errno) returns an error and leaves the context as it was. Once the launch begins, the
 * context is consumed.
 *
 * Arguments:
 *  "ctx_id" - the configuration context ID.
 *
 * Returns:
 *  Only when the context cannot launch, with a negative errno: -ENOENT for an unknown
 *  context, -EINVAL for a missing TEE config or root disk, the open's errno for a disk that
 *  cannot be opened; the context is kept. Once the launch has begun the calling process
 *  exits and never returns: with the workload's exit status when it ran (0-255, or 128+N when
 *  the workload was killed by signal N), and with 125 when the microVM could not start or
 *  attest (a missing host prerequisite of the SEV hardware backend, an unreadable guest
 *  bundle, a refused attestation, a failed launch step, or a guest that stopped without
 *  reporting a status), after one line on stderr saying why, whatever the log level. The
 *  backend, bundle, PSP model identity and log filter are the host settings captured when
 *  the library was loaded (docs/crun-podman.md, "Host settings"): KRUN_SEV_BACKEND=model in
 *  the loading process's environment or /etc/krun-sev.conf selects the PSP model (no memory
 *  encryption).
 */
int32_t krun_start_enter(uint32_t ctx_id);

#ifdef __cplusplus
}
#endif

#endif /* LIBKRUN_SEV_H */
