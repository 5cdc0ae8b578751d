//! Dropout: in training, zero each element with probability p and scale the rest by
//! 1/(1−p); in evaluation, the identity. The mask comes from the caller's seeded generator.
//! A multiply by that mask, so the backward is mul's: dx = g ⊙ mask.

use crate::{Error, Result, Rng, Tensor};

impl Tensor {
    /// Dropout (`torch.nn.functional.dropout`): with `train`, each element is zeroed with
    /// probability `p` and the others scaled by 1/(1−p), the mask drawn from `rng`; without
    /// `train` (or with p = 0), `self` itself. `p` outside [0, 1) is an `Error::Invalid`.
    pub fn dropout(&self, p: f64, train: bool, rng: &mut Rng) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("p must be in [0, 1), got {p}")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 - p;
        // the first dimension outermost: with a part (data-parallel ranks) each rank draws its
        // rows' slice of the mask of the whole batch
        let mask: Vec<f64> = rng
            .uniform_block(self.numel())
            .into_iter()
            .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, self.shape(), self.device())?.to_dtype(self.dtype())?;
        self.mul(&mask)
    }
}
