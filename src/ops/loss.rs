//! Losses built from other ops: mean squared error and negative log-likelihood, both with mean
//! reduction (PyTorch's default). Their backward rules are those of the ops they are made of:
//! mse, 2(a − b)·g/n for `self` and the negation for the target; nll, −g/N at each row's target
//! log-probability (gather's backward), 0 elsewhere. For logits, `cross_entropy` fuses
//! log_softmax and nll in one kernel.

use crate::{Error, Result, Tensor};

impl Tensor {
    /// mean((self − target)²) over every element, shape []: PyTorch's `mse_loss` with
    /// `reduction="mean"`. Both must have one shape (PyTorch broadcasts with a warning, which
    /// mostly hides a bug); gradients flow to both.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shape(
                "mse_loss",
                format!(
                    "input {:?} and target {:?} must have one shape",
                    self.shape(),
                    target.shape()
                ),
            ));
        }
        if self.numel() == 0 {
            return Err(Error::shape(
                "mse_loss",
                "the mean of no elements is undefined (shape has a 0)",
            ));
        }
        self.sub(target)?.sqr()?.mean_all()
    }

    /// −mean over rows of `self[n, targets[n]]`, shape []: PyTorch's `nll_loss` with
    /// `reduction="mean"` and no class weights or ignored index. `self` holds log-probabilities
    /// `[N, C]` (a `log_softmax`), `targets` the classes, U32 `[N]`, each below C.
    pub fn nll_loss(&self, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "nll_loss";
        let (n, _) = match self.shape() {
            &[n, c] => (n, c),
            s => return Err(Error::shape(OP, format!("log-probabilities must be [N, C], got {s:?}"))),
        };
        if targets.shape() != [n] {
            return Err(Error::shape(
                OP,
                format!(
                    "targets must be [N] = [{n}] for log-probabilities {:?}, got {:?}",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        if n == 0 {
            return Err(Error::shape(OP, "the mean over no rows is undefined (N = 0)"));
        }
        self.gather_as(OP, 1, &targets.unsqueeze(1)?)?.mean_all()?.neg()
    }
}
