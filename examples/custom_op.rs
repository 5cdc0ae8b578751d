//! A custom op composed of kiln ops, its gradient checked by finite differences with the public
//! `kiln::testing::gradcheck`: the Mish activation, mish(x) = x · tanh(softplus(x)), with
//! softplus(x) = log(1 + exp(x)). Autograd differentiates the composition; gradcheck confirms
//! that the result matches the slope of the forward, element by element, in f64.
//!
//!     cargo run --release --example custom_op

use kiln::{DType, Device, Result, Rng, Tensor};

/// mish(x) = x · tanh(log(1 + exp(x))), elementwise, differentiable through its parts.
fn mish(x: &Tensor) -> Result<Tensor> {
    let softplus = x.exp()?.add_scalar(1.0)?.log()?;
    x.mul(&softplus.tanh()?)
}

/// The gradient check: the scalar is a weighted sum of mish(x) with random weights, so that every
/// element's gradient counts with its own weight (a plain sum would hide a permuted gradient).
fn check(dev: &Device) -> Result<()> {
    let x = Tensor::randn(&[4, 7], DType::F64, &mut Rng::new(0), dev)?;
    let w = Tensor::randn(&[4, 7], DType::F64, &mut Rng::new(1), dev)?;
    kiln::testing::gradcheck(&[x], |t| mish(&t[0])?.mul(&w)?.sum_all())
}

fn main() -> Result<()> {
    let x = Tensor::from_vec(vec![-2f32, -0.5, 0., 0.5, 2.], &[5], &Device::Cpu)?;
    println!("x       = {x}");
    println!("mish(x) = {}", mish(&x)?);
    check(&Device::Cpu)?;
    println!("gradient check passed: backward matches central differences in f64");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mish_passes_the_gradient_check() {
        check(&Device::Cpu).unwrap();
    }

    /// The check can fail: a wrong backward (the tanh factor detached, so its derivative is
    /// dropped) is caught.
    #[test]
    fn a_wrong_gradient_fails_the_check() {
        let x = Tensor::randn(&[4, 7], DType::F64, &mut Rng::new(0), &Device::Cpu).unwrap();
        let wrong = |t: &[Tensor]| {
            let softplus = t[0].exp()?.add_scalar(1.0)?.log()?;
            t[0].mul(&softplus.tanh()?.detach())?.sum_all()
        };
        assert!(kiln::testing::gradcheck(&[x], wrong).is_err());
    }

    #[test]
    fn mish_matches_its_formula() {
        let x = Tensor::from_vec(vec![-2f64, 0.0, 1.5], &[3], &Device::Cpu).unwrap();
        let got = mish(&x).unwrap().to_vec::<f64>().unwrap();
        for (g, v) in got.iter().zip([-2f64, 0.0, 1.5]) {
            assert!((g - v * (1.0 + v.exp()).ln().tanh()).abs() < 1e-12);
        }
    }
}
