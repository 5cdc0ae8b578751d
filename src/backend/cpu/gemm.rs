//! Placeholder GEMM (replaced by the blocked AVX-512 kernel): C = alpha·A·B + beta·C with
//! arbitrary row/column strides, so transposed views need no copy.

macro_rules! naive_gemm {
    ($name:ident, $t:ty) => {
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            m: usize,
            n: usize,
            k: usize,
            alpha: $t,
            a: &[$t],
            rsa: isize,
            csa: isize,
            b: &[$t],
            rsb: isize,
            csb: isize,
            beta: $t,
            c: &mut [$t],
            rsc: isize,
            csc: isize,
        ) {
            for i in 0..m {
                for j in 0..n {
                    let mut acc: $t = 0.0;
                    for p in 0..k {
                        acc += a[(i as isize * rsa + p as isize * csa) as usize]
                            * b[(p as isize * rsb + j as isize * csb) as usize];
                    }
                    let ci = (i as isize * rsc + j as isize * csc) as usize;
                    c[ci] = if beta == 0.0 {
                        alpha * acc
                    } else {
                        alpha * acc + beta * c[ci]
                    };
                }
            }
        }
    };
}
naive_gemm!(sgemm, f32);
naive_gemm!(dgemm, f64);
