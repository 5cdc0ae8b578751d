// emu_half.h — __half and __nv_bfloat16 for the emulator, with no CUDA headers.
// Part of emu.h, which includes it after <math.h> and the vector types (float2); not used on its own.
//
// Both are 16-bit storage types (the raw bits in `__x`, as in CUDA) that compute in float. Conversions
// from float round exactly as CUDA's do:
//   - float -> half: IEEE binary16, round to nearest even by default (__float2half, __float2half_rn, the
//     constructors), or toward zero / down / up (_rz, _rd, _ru). Results below half the smallest
//     subnormal (2^-25) round to a signed zero, values from 65520 up round to infinity (65520 is the tie
//     between 65504 and 2^16, and 65504's odd significand loses the tie). Every NaN becomes the
//     canonical 0x7FFF, as both the device's cvt.rn.f16.f32 and cuda_fp16.hpp's host path produce.
//   - float -> bfloat16: the upper 16 bits of the float, rounded to nearest even (or truncated for _rz);
//     NaN becomes 0x7FFF as in cuda_bf16.hpp.
//   - half/bf16 -> float is exact; a half NaN becomes the canonical float NaN 0x7FFFFFFF (as in
//     cuda_fp16.hpp), a bfloat16 NaN keeps its payload (the conversion is a shift).
// Arithmetic rounds the exact float result once more: for +, -, *, / of two halves (11-bit significands)
// or bfloat16s (8 bits), float's 24 bits are at least 2p+2, so that double rounding gives the correctly
// rounded result the GPU's native instructions give.
#pragma once


namespace emu {
namespace fp {

inline uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

enum class Round { Nearest, Zero, Down, Up };

// Whether a magnitude truncated to `kept` must be incremented, given the dropped bits `rem` and the
// value of half an ulp (`halfway`) in the same units.
template <Round R>
inline bool round_increment(bool negative, uint32_t kept, uint32_t rem, uint32_t halfway) {
    switch (R) {
    case Round::Nearest: return rem > halfway || (rem == halfway && (kept & 1u));
    case Round::Zero: return false;
    case Round::Down: return negative && rem != 0;
    case Round::Up: return !negative && rem != 0;
    }
    return false;
}

template <Round R>
inline uint16_t float_to_half(float f) {
    const uint32_t x = bits_of(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const bool neg = sign != 0;
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;                 // NaN -> canonical NaN
    if (a >= 0x47800000u) {                              // >= 2^16 (or inf): beyond the largest half
        const bool to_inf = a == 0x7f800000u || R == Round::Nearest || (R == Round::Up && !neg) ||
                            (R == Round::Down && neg);
        return sign | (to_inf ? 0x7c00u : 0x7bffu);
    }
    if (a >= 0x38800000u) {                              // normal half range, [2^-14, 2^16)
        // Rebias the exponent from 127 to 15 ((127-15) << 23 = 0x38000000) and drop 13 significand bits;
        // an increment carries into the exponent correctly, up to 0x7c00 (inf) from 65520 on.
        const uint32_t r = a - 0x38000000u;
        uint32_t h = r >> 13;
        h += round_increment<R>(neg, h, r & 0x1fffu, 0x1000u);
        return static_cast<uint16_t>(sign | h);
    }
    if (a < 0x33000000u) {                               // below 2^-25: only directed rounding moves it
        const bool up = a != 0 && ((R == Round::Up && !neg) || (R == Round::Down && neg));
        return sign | (up ? 1u : 0u);
    }
    // Subnormal half: the value is m * 2^(e-150) with the implicit bit in m; in units of the smallest
    // subnormal (2^-24) that is m >> (126 - e), with 126 - e in 14..24 here.
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t h = m >> shift;
    h += round_increment<R>(neg, h, m & ((1u << shift) - 1u), 1u << (shift - 1u));
    return static_cast<uint16_t>(sign | h);
}

inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return float_of(m ? 0x7fffffffu : sign | 0x7f800000u); // inf; NaN -> canonical NaN
    if (e == 0) {                                                      // zero or subnormal: m * 2^-24
        const float v = static_cast<float>(m) * 5.9604644775390625e-8f; // exact: m < 2^10
        return float_of(sign | bits_of(v));
    }
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

template <Round R>
inline uint16_t float_to_bf16(float f) {
    const uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;             // NaN -> canonical NaN
    const uint32_t kept = x >> 16;
    // bfloat16 keeps float's exponent, so subnormals, overflow to inf (a carry out of the largest
    // finite value) and infinities all fall out of the same rounding of the low 16 bits.
    return static_cast<uint16_t>(kept + round_increment<R>((x >> 31) != 0, kept, x & 0xffffu, 0x8000u));
}

inline float bf16_to_float(uint16_t b) { return float_of(static_cast<uint32_t>(b) << 16); }

// double -> float rounded to odd: truncate, then set the last bit if anything was dropped. Rounding
// that to half (or bf16) to nearest even equals rounding the double directly, because float keeps
// at least 2 more bits than the target; so double conversions need no separate implementation.
inline float double_to_float_round_odd(double d) {
    float f = static_cast<float>(d);
    if (f != f) return f;
    if (static_cast<double>(f) == d) return f;
    if (d > 0 ? static_cast<double>(f) > d : static_cast<double>(f) < d) {
        uint32_t u = bits_of(f);                                     // step toward zero by one ulp
        f = float_of(u - 1u);                                        // (|f| > 0 here, so no borrow)
    }
    return float_of(bits_of(f) | 1u);
}

struct HalfFormat {
    static uint16_t from_float(float f) { return float_to_half<Round::Nearest>(f); }
    static float to_float(uint16_t h) { return half_to_float(h); }
};
struct Bf16Format {
    static uint16_t from_float(float f) { return float_to_bf16<Round::Nearest>(f); }
    static float to_float(uint16_t b) { return bf16_to_float(b); }
};

} // namespace fp

template <class Format>
struct Raw16 {
    unsigned short x;
};

// One template serves both 16-bit float types; __half and __nv_bfloat16 are distinct instantiations.
// The members follow cuda_fp16.hpp: raw bits in __x, a trivial default constructor (so the type can
// live in __shared__ arrays), converting constructors from the arithmetic types, and an implicit
// conversion to float.
template <class Format>
struct Float16 {
    unsigned short __x;

    Float16() = default;
    constexpr Float16(Raw16<Format> r) : __x(r.x) {}
    Float16(float f) : __x(Format::from_float(f)) {}
    Float16(double d) : __x(Format::from_float(fp::double_to_float_round_odd(d))) {}
    // Every integer converts exactly to float below 2^24 and overflows both formats' precision or
    // range before that matters, so converting through float rounds correctly.
    Float16(int i) : Float16(static_cast<float>(i)) {}
    Float16(unsigned int i) : Float16(static_cast<float>(i)) {}
    Float16(long long i) : Float16(static_cast<double>(i)) {}
    Float16(unsigned long long i) : Float16(static_cast<double>(i)) {}
    Float16(short i) : Float16(static_cast<float>(i)) {}
    Float16(unsigned short i) : Float16(static_cast<float>(i)) {}

    operator float() const { return Format::to_float(__x); }
    operator Raw16<Format>() const { return Raw16<Format>{__x}; }

    Float16 &operator+=(Float16 o) { return *this = Float16(float(*this) + float(o)); }
    Float16 &operator-=(Float16 o) { return *this = Float16(float(*this) - float(o)); }
    Float16 &operator*=(Float16 o) { return *this = Float16(float(*this) * float(o)); }
    Float16 &operator/=(Float16 o) { return *this = Float16(float(*this) / float(o)); }
};

template <class F> inline Float16<F> operator+(Float16<F> a, Float16<F> b) { return Float16<F>(float(a) + float(b)); }
template <class F> inline Float16<F> operator-(Float16<F> a, Float16<F> b) { return Float16<F>(float(a) - float(b)); }
template <class F> inline Float16<F> operator*(Float16<F> a, Float16<F> b) { return Float16<F>(float(a) * float(b)); }
template <class F> inline Float16<F> operator/(Float16<F> a, Float16<F> b) { return Float16<F>(float(a) / float(b)); }
template <class F> inline Float16<F> operator-(Float16<F> a) { return Float16<F>(Raw16<F>{static_cast<unsigned short>(a.__x ^ 0x8000u)}); }
template <class F> inline Float16<F> operator+(Float16<F> a) { return a; }
template <class F> inline bool operator==(Float16<F> a, Float16<F> b) { return float(a) == float(b); }
template <class F> inline bool operator!=(Float16<F> a, Float16<F> b) { return float(a) != float(b); }
template <class F> inline bool operator<(Float16<F> a, Float16<F> b) { return float(a) < float(b); }
template <class F> inline bool operator>(Float16<F> a, Float16<F> b) { return float(a) > float(b); }
template <class F> inline bool operator<=(Float16<F> a, Float16<F> b) { return float(a) <= float(b); }
template <class F> inline bool operator>=(Float16<F> a, Float16<F> b) { return float(a) >= float(b); }

// The two-element vectors (__half2, __nv_bfloat162): 4-byte aligned, lane-wise arithmetic.
template <class Format>
struct alignas(4) Float16x2 {
    Float16<Format> x, y;

    Float16x2() = default;
    constexpr Float16x2(Float16<Format> a, Float16<Format> b) : x(a), y(b) {}
};

template <class F> inline Float16x2<F> operator+(Float16x2<F> a, Float16x2<F> b) { return {a.x + b.x, a.y + b.y}; }
template <class F> inline Float16x2<F> operator-(Float16x2<F> a, Float16x2<F> b) { return {a.x - b.x, a.y - b.y}; }
template <class F> inline Float16x2<F> operator*(Float16x2<F> a, Float16x2<F> b) { return {a.x * b.x, a.y * b.y}; }
template <class F> inline Float16x2<F> operator/(Float16x2<F> a, Float16x2<F> b) { return {a.x / b.x, a.y / b.y}; }

} // namespace emu

using __half = emu::Float16<emu::fp::HalfFormat>;
using __nv_bfloat16 = emu::Float16<emu::fp::Bf16Format>;
using __half_raw = emu::Raw16<emu::fp::HalfFormat>;
using __nv_bfloat16_raw = emu::Raw16<emu::fp::Bf16Format>;
using __half2 = emu::Float16x2<emu::fp::HalfFormat>;
using __nv_bfloat162 = emu::Float16x2<emu::fp::Bf16Format>;
using half = __half;
using half2 = __half2;
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half is 2 bytes, 2-aligned");
static_assert(sizeof(__half2) == 4 && alignof(__half2) == 4, "__half2 is 4 bytes, 4-aligned");

// Conversions, as named in cuda_fp16.h / cuda_bf16.h.
inline __half __float2half(float f) { return __half_raw{emu::fp::float_to_half<emu::fp::Round::Nearest>(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half __float2half_rz(float f) { return __half_raw{emu::fp::float_to_half<emu::fp::Round::Zero>(f)}; }
inline __half __float2half_rd(float f) { return __half_raw{emu::fp::float_to_half<emu::fp::Round::Down>(f)}; }
inline __half __float2half_ru(float f) { return __half_raw{emu::fp::float_to_half<emu::fp::Round::Up>(f)}; }
inline __half __double2half(double d) { return __half(d); }
inline __half __int2half_rn(int i) { return __half(i); }
inline float __half2float(__half h) { return emu::fp::half_to_float(h.__x); }
inline int __half2int_rz(__half h) { return static_cast<int>(__half2float(h)); } // |h| <= 65504 fits
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16_raw{emu::fp::float_to_bf16<emu::fp::Round::Nearest>(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) { return __nv_bfloat16_raw{emu::fp::float_to_bf16<emu::fp::Round::Zero>(f)}; }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::fp::bf16_to_float(b.__x); }

inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline __half __short_as_half(short s) { return __half_raw{static_cast<unsigned short>(s)}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
inline short __bfloat16_as_short(__nv_bfloat16 b) { return static_cast<short>(b.__x); }
inline __nv_bfloat16 __short_as_bfloat16(short s) { return __nv_bfloat16_raw{static_cast<unsigned short>(s)}; }

inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __half2half2(__half a) { return {a, a}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
inline __half2 __float2half2_rn(float a) { return {__float2half(a), __float2half(a)}; }
inline __half __low2half(__half2 v) { return v.x; }
inline __half __high2half(__half2 v) { return v.y; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return {__float2bfloat16(a), __float2bfloat16(a)}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }

// Arithmetic and comparison intrinsics for both scalar types (CUDA has the same names for each).
template <class F> inline emu::Float16<F> __hadd(emu::Float16<F> a, emu::Float16<F> b) { return a + b; }
template <class F> inline emu::Float16<F> __hsub(emu::Float16<F> a, emu::Float16<F> b) { return a - b; }
template <class F> inline emu::Float16<F> __hmul(emu::Float16<F> a, emu::Float16<F> b) { return a * b; }
template <class F> inline emu::Float16<F> __hdiv(emu::Float16<F> a, emu::Float16<F> b) { return a / b; }
template <class F> inline emu::Float16<F> __hneg(emu::Float16<F> a) { return -a; }
template <class F> inline emu::Float16<F> __habs(emu::Float16<F> a) { return emu::Raw16<F>{static_cast<unsigned short>(a.__x & 0x7fffu)}; }
// __hmax/__hmin return the other operand when one is NaN, like fmaxf/fminf.
template <class F> inline emu::Float16<F> __hmax(emu::Float16<F> a, emu::Float16<F> b) { return emu::Float16<F>(fmaxf(float(a), float(b))); }
template <class F> inline emu::Float16<F> __hmin(emu::Float16<F> a, emu::Float16<F> b) { return emu::Float16<F>(fminf(float(a), float(b))); }
template <class F> inline bool __heq(emu::Float16<F> a, emu::Float16<F> b) { return a == b; }
template <class F> inline bool __hlt(emu::Float16<F> a, emu::Float16<F> b) { return a < b; }
template <class F> inline bool __hgt(emu::Float16<F> a, emu::Float16<F> b) { return a > b; }
template <class F> inline bool __hisnan(emu::Float16<F> a) { return float(a) != float(a); }
template <class F> inline int __hisinf(emu::Float16<F> a) {
    const float f = float(a);
    return f == INFINITY ? 1 : (f == -INFINITY ? -1 : 0);
}
template <class F> inline emu::Float16x2<F> __hadd2(emu::Float16x2<F> a, emu::Float16x2<F> b) { return a + b; }
template <class F> inline emu::Float16x2<F> __hmul2(emu::Float16x2<F> a, emu::Float16x2<F> b) { return a * b; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline __half2 __float22half2_rn(float2 v) { return {__float2half(v.x), __float2half(v.y)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return {__float2bfloat16(v.x), __float2bfloat16(v.y)}; }
