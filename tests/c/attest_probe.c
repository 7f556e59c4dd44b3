/* A hostile workload for the attestation-binding test (tests/host/tests/binding.rs): run as
 * root inside a confidential guest after the init has the disk key, it tries every path to
 * attestation evidence and prints one line per path:
 *
 *   PROBE <path>=refused <errno name>    (the path is closed)
 *   PROBE <path>=OPEN                    (it is not)
 *
 * and exits 0 when every path is closed, 66 otherwise. Static, so it runs in a busybox
 * root file system. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int open_paths;

static void report(const char *path, int rc)
{
    if (rc == 0) {
        printf("PROBE %s=OPEN\n", path);
        open_paths++;
    } else {
        printf("PROBE %s=refused %s\n", path, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    }
}

static int vsock_connect(unsigned int port)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_vm addr = {
        .svm_family = AF_VSOCK,
        .svm_cid = VMADDR_CID_HOST,
        .svm_port = port,
    };
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int main(void)
{
    int fd = open("/dev/sev-guest", O_RDWR);
    report("dev-sev-guest", fd < 0 ? -1 : 0);
    if (fd >= 0)
        close(fd);

    /* The SNP guest device is a misc device (major 10); any new node needs CAP_MKNOD. */
    report("mknod", mknod("/tmp/probe-sev-guest", S_IFCHR | 0600, makedev(10, 100)));
    mkdir("/tmp/probe-dev", 0700);
    report("mount-devtmpfs", mount("devtmpfs", "/tmp/probe-dev", "devtmpfs", 0, NULL));
    mkdir("/tmp/probe-cfg", 0700);
    report("mount-configfs", mount("configfs", "/tmp/probe-cfg", "configfs", 0, NULL));
    report("tsm-report", access("/sys/kernel/config/tsm/report", F_OK));

    report("vsock-1025-proxy", vsock_connect(1025));
    report("vsock-1026-reports", vsock_connect(1026));

    /* Dropped for good: not even the bounding set has them. */
    errno = EPERM;
    report("cap-sys-admin", prctl(PR_CAPBSET_READ, 21, 0, 0, 0) == 1 ? 0 : -1);
    errno = EPERM;
    report("cap-mknod", prctl(PR_CAPBSET_READ, 27, 0, 0, 0) == 1 ? 0 : -1);

    fflush(stdout);
    return open_paths ? 66 : 0;
}
