/* main.c: lenet_predict on raw images read from standard input (an example for a computer;
   on a board, call lenet_predict with the pixels from the sensor).

   Build: cc -std=c99 -O2 -o lenet main.c lenet_model.c
   Run:   ./lenet < images.bin    (LENET_INPUT_BYTES bytes per image: channel, row, column)
   Prints one line per image: the class, its name, then every score. */
#include <stdio.h>

#include "lenet_model.h"

int main(void)
{
    static uint8_t pixels[LENET_INPUT_BYTES];
    int32_t scores[LENET_NUM_CLASSES];
    while (fread(pixels, 1, LENET_INPUT_BYTES, stdin) == LENET_INPUT_BYTES) {
        const int best = lenet_predict(pixels, scores);
        int i;
        printf("%d %s", best, lenet_class_names[best]);
        for (i = 0; i < LENET_NUM_CLASSES; i++) printf(" %ld", (long)scores[i]);
        printf("\n");
    }
    return 0;
}
