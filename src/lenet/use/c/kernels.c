/* The kernels: C99, integer arithmetic only, no allocation, no library calls.
   Tensors are int8, channel by channel, row by row (C, H, W); real = scale * (q - zero). */

/* x / 2^shift rounded half to even, 1 <= shift <= 62. A negative number is never shifted
   (C99 leaves that to the compiler): floor division is written out instead. */
static int64_t lenet_round_shift(int64_t x, int32_t shift)
{
    const int64_t one = (int64_t)1 << shift;
    const int64_t half = one >> 1;
    int64_t q = x >= 0 ? x >> shift : -(((-x) - 1) >> shift) - 1; /* floor(x / 2^shift) */
    const int64_t r = x - q * one;                                 /* 0 <= r < 2^shift */
    if (r > half || (r == half && q % 2 != 0)) q += 1;
    return q;
}

/* saturate(round(acc * multiplier / 2^shift) + zero): |acc| < 2^31 and multiplier < 2^31,
   so the product fits int64 with room to spare. */
static int32_t lenet_requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t zero,
                                int32_t low, int32_t high)
{
    const int64_t q = lenet_round_shift((int64_t)acc * multiplier, shift) + zero;
    return (int32_t)(q < low ? low : q > high ? high : q);
}

#if LENET_USES_CONV
/* Stride-1 convolution; padding reads in_zero (a real 0). */
static void lenet_conv(const int8_t *in, int8_t *out, int32_t channels, int32_t height, int32_t width,
                       int32_t filters, int32_t k, int32_t pad, const int8_t *weight, const int32_t *bias,
                       const int32_t *multiplier, const int8_t *shift, int32_t in_zero, int32_t out_zero)
{
    const int32_t out_h = height + 2 * pad - k + 1, out_w = width + 2 * pad - k + 1;
    int32_t f, y, x, c, ky, kx;
    for (f = 0; f < filters; f++) {
        for (y = 0; y < out_h; y++) {
            for (x = 0; x < out_w; x++) {
                int32_t acc = bias[f];
                for (c = 0; c < channels; c++) {
                    for (ky = 0; ky < k; ky++) {
                        const int32_t iy = y + ky - pad;
                        if (iy < 0 || iy >= height) continue;
                        for (kx = 0; kx < k; kx++) {
                            const int32_t ix = x + kx - pad;
                            if (ix < 0 || ix >= width) continue;
                            acc += (int32_t)weight[((f * channels + c) * k + ky) * k + kx] *
                                   ((int32_t)in[(c * height + iy) * width + ix] - in_zero);
                        }
                    }
                }
                out[(f * out_h + y) * out_w + x] =
                    (int8_t)lenet_requantize(acc, multiplier[f], shift[f], out_zero, -128, 127);
            }
        }
    }
}
#endif

/* Dense layer: int8 outputs, or (scores != 0) the last layer's int32 scores. */
static void lenet_dense(const int8_t *in, int8_t *out, int32_t *scores, int32_t inputs, int32_t outputs,
                        const int8_t *weight, const int32_t *bias, const int32_t *multiplier,
                        const int8_t *shift, int32_t in_zero, int32_t out_zero)
{
    int32_t o, i;
    for (o = 0; o < outputs; o++) {
        int32_t acc = bias[o];
        for (i = 0; i < inputs; i++) acc += (int32_t)weight[o * inputs + i] * ((int32_t)in[i] - in_zero);
        if (scores)
            scores[o] = lenet_requantize(acc, multiplier[o], shift[o], 0, INT32_MIN, INT32_MAX);
        else
            out[o] = (int8_t)lenet_requantize(acc, multiplier[o], shift[o], out_zero, -128, 127);
    }
}

#if LENET_USES_LOOKUP
/* An element-wise activation, in place: out = table[q + 128]. */
static void lenet_lookup(int8_t *values, int32_t count, const int8_t *table)
{
    int32_t i;
    for (i = 0; i < count; i++) values[i] = table[values[i] + 128];
}
#endif

#if LENET_USES_MAX_POOL
/* Max pooling; padding never wins (every window holds a real value: pad <= size / 2). */
static void lenet_max_pool(const int8_t *in, int8_t *out, int32_t channels, int32_t height, int32_t width,
                           int32_t size, int32_t stride, int32_t pad)
{
    const int32_t out_h = (height + 2 * pad - size) / stride + 1, out_w = (width + 2 * pad - size) / stride + 1;
    int32_t c, y, x, ky, kx;
    for (c = 0; c < channels; c++) {
        for (y = 0; y < out_h; y++) {
            for (x = 0; x < out_w; x++) {
                int32_t best = -129;
                for (ky = 0; ky < size; ky++) {
                    const int32_t iy = y * stride + ky - pad;
                    if (iy < 0 || iy >= height) continue;
                    for (kx = 0; kx < size; kx++) {
                        const int32_t ix = x * stride + kx - pad;
                        if (ix >= 0 && ix < width && in[(c * height + iy) * width + ix] > best)
                            best = in[(c * height + iy) * width + ix];
                    }
                }
                out[(c * out_h + y) * out_w + x] = (int8_t)best;
            }
        }
    }
}
#endif

#if LENET_USES_AVG_POOL
/* total / count rounded half to even, count > 0. */
static int32_t lenet_divide_rounded(int32_t total, int32_t count)
{
    int32_t q = total / count, r = total % count; /* C99 truncates toward zero */
    if (r < 0) {
        q -= 1;
        r += count;
    }
    if (2 * r > count || (2 * r == count && q % 2 != 0)) q += 1;
    return q;
}

static int8_t lenet_int8(int32_t value)
{
    return (int8_t)(value < -128 ? -128 : value > 127 ? 127 : value);
}

/* Average pooling: the sum of (q - zero) over the window, padding counting as 0, divided
   by size * size, rounded half to even. */
static void lenet_avg_pool(const int8_t *in, int8_t *out, int32_t channels, int32_t height, int32_t width,
                           int32_t size, int32_t stride, int32_t pad, int32_t zero)
{
    const int32_t out_h = (height + 2 * pad - size) / stride + 1, out_w = (width + 2 * pad - size) / stride + 1;
    int32_t c, y, x, ky, kx;
    for (c = 0; c < channels; c++) {
        for (y = 0; y < out_h; y++) {
            for (x = 0; x < out_w; x++) {
                int32_t total = 0;
                for (ky = 0; ky < size; ky++) {
                    const int32_t iy = y * stride + ky - pad;
                    if (iy < 0 || iy >= height) continue;
                    for (kx = 0; kx < size; kx++) {
                        const int32_t ix = x * stride + kx - pad;
                        if (ix >= 0 && ix < width) total += (int32_t)in[(c * height + iy) * width + ix] - zero;
                    }
                }
                out[(c * out_h + y) * out_w + x] = lenet_int8(lenet_divide_rounded(total, size * size) + zero);
            }
        }
    }
}
#endif

/* The first of the highest scores. */
static int lenet_argmax(const int32_t *scores, int32_t count)
{
    int32_t i, best = 0;
    for (i = 1; i < count; i++)
        if (scores[i] > scores[best]) best = i;
    return (int)best;
}
