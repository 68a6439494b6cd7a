//! Deterministic PRNG (xoshiro256**, SplitMix64) and libm-free exp, bit-identical on every platform.

/// xoshiro256** 1.0 (Blackman & Vigna, <https://prng.di.unimi.it/xoshiro256starstar.c>),
/// its 256-bit state filled from the 64-bit seed by SplitMix64 as the authors recommend.
/// Integer-only, so the stream is bit-identical on every platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xoshiro256StarStar {
    s: [u64; 4],
}

/// SplitMix64 (Steele, Lea & Flood 2014): advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Xoshiro256StarStar {
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Xoshiro256StarStar { s }
    }

    /// Raw state (must not be all zero).
    pub fn from_state(s: [u64; 4]) -> Self {
        Xoshiro256StarStar { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1): the top 53 bits scaled by 2⁻⁵³ (exact).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// eˣ from IEEE basic operations only (no libm), so it is bit-identical on every platform.
/// Cody–Waite reduction x = k·ln2 + r with |r| ≤ ln2/2 (fdlibm's split ln2, whose high part
/// has enough trailing zero bits that k·LN2_HI is exact), a degree-13 Taylor polynomial for
/// eʳ (truncation error < 2⁻⁵⁵ relative), then scaling by 2ᵏ through the exponent bits.
/// Results below ~1e-307 flush to 0 (irrelevant as sampling weights).
pub fn det_exp(x: f64) -> f64 {
    // fdlibm's ln2_hi (6.93147180369123816490e-01) and ln2_lo (1.90821492927058770002e-10).
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let k = (x * LOG2_E + 0.5).floor();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Horner on 1/13! … 1/0!.
    const C: [f64; 14] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = C[0];
    for &c in &C[1..] {
        p = p * r + c;
    }
    // k ∈ [-1022, 1023] here, so 2ᵏ is a normal number.
    let scale = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    p * scale
}
