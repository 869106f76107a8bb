/*
 * replay.c -- the main() of every fuzz target when it is not linked with
 * libFuzzer: feed each regular file of the directories given as arguments
 * to LLVMFuzzerTestOneInput(), so ctest replays the committed corpus (under
 * ASan+UBSan in `make test`). Exits 1 if a directory cannot be read or
 * holds no input.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int files = 0;

    for (int a = 1; a < argc; a++) {
        DIR *dir = opendir(argv[a]);
        struct dirent *de;

        if (dir == NULL) {
            perror(argv[a]);
            return 1;
        }
        while ((de = readdir(dir)) != NULL) {
            char path[4096];
            FILE *f;
            char *buf;
            long n;

            if (de->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[a], de->d_name);
            f = fopen(path, "rb");
            if (f == NULL)
                continue;
            if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
                fseek(f, 0, SEEK_SET) != 0) {
                fclose(f);
                continue;
            }
            buf = malloc(n > 0 ? (size_t)n : 1);
            if (buf != NULL && fread(buf, 1, (size_t)n, f) == (size_t)n) {
                LLVMFuzzerTestOneInput((const uint8_t *)buf, (size_t)n);
                files++;
            }
            free(buf);
            fclose(f);
        }
        closedir(dir);
    }
    printf("replayed %d inputs\n", files);
    return files > 0 ? 0 : 1;
}
