/*
 * libkrunfw-sev.so.4: the guest bundle (manifest.json, bzImage, initrd.cpio.zst) as a
 * loadable library, the way libkrunfw-sev carried libkrun-sev's guest. buildah mkcw looks
 * for this file by name and hands its path to `krunfw_measurement`, which reads the bundle
 * from it through krunfw_sev_get_file() and checks every file against the manifest.
 *
 * Built by `make krunfw` with the bundle directory on the assembler's include path
 * (-Wa,-I,DIR); the files are embedded with .incbin, so the library holds exactly the
 * bytes the manifest lists.
 */
#include <stddef.h>
#include <string.h>

#define KRUNFW_ABI_VERSION 4

/* One embedded file: NAME_start .. NAME_end in read-only data, page aligned. */
#define EMBED(name, file)                                                   \
    __asm__(".section .rodata." #name ",\"a\",@progbits\n"                  \
            ".balign 4096\n"                                                \
            ".local " #name "_start\n"                                      \
            #name "_start:\n"                                               \
            ".incbin \"" file "\"\n"                    \
            ".local " #name "_end\n"                                        \
            #name "_end:\n"                                                 \
            ".previous\n");                                                 \
    extern const char name##_start[] __attribute__((visibility("hidden"))); \
    extern const char name##_end[] __attribute__((visibility("hidden")))

EMBED(manifest, "manifest.json");
EMBED(bzimage, "bzImage");
EMBED(initrd, "initrd.cpio.zst");

int krunfw_get_version(void)
{
    return KRUNFW_ABI_VERSION;
}

/* The bytes of bundle file `name` and their count in *size; NULL for any other name. */
const char *krunfw_sev_get_file(const char *name, size_t *size)
{
    static const struct {
        const char *name;
        const char *start;
        const char *end;
    } files[] = {
        { "manifest.json", manifest_start, manifest_end },
        { "bzImage", bzimage_start, bzimage_end },
        { "initrd.cpio.zst", initrd_start, initrd_end },
    };
    if (name == NULL || size == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if (strcmp(name, files[i].name) == 0) {
            *size = (size_t)(files[i].end - files[i].start);
            return files[i].start;
        }
    }
    return NULL;
}
