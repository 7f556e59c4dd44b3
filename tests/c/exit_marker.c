/* The workload of the real-buildah test (tests/host/tests/buildah.rs): the whole image is this
 * one static program, so buildah's image holds nothing else. `exit_marker MARKER STATUS`
 * prints "MARKER CPUS=<online vCPUs>" and exits with STATUS. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: exit_marker MARKER STATUS\n");
        return 2;
    }
    printf("%s CPUS=%ld\n", argv[1], sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
    return atoi(argv[2]);
}
