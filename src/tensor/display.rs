//! `Display` for [`Tensor`], as PyTorch prints one: `tensor([[1, 2], [3, 4]])` laid out one row
//! per line, integers as integers, floats with 4 decimals (or in scientific notation when their
//! magnitudes span more than 1000×, or pass 1e8, or fall below 1e-4), and tensors of more than
//! 1000 elements summarised to their first and last 3 entries along each dim, with `...` between.
//! A dtype other than f32 (floats) or u32 (integers), and a device other than the CPU, are named
//! after the values: `tensor([0.5000], dtype=bf16, device=emu)`. Unlike PyTorch, long rows are not
//! wrapped at 80 columns.

use super::Tensor;
use crate::{DType, Device, Result};
use std::fmt;

/// Tensors with more elements than this are summarised (PyTorch's `threshold`).
const THRESHOLD: usize = 1000;
/// Entries kept at each end of a summarised dim (PyTorch's `edgeitems`).
const EDGE: usize = 3;

/// What the printed values are: the kept entries in row-major order, and for each dim the number
/// kept and whether entries were left out in its middle.
struct Shown {
    values: Vec<f64>,
    dims: Vec<(usize, bool)>,
}

/// The entries to print: all, or (summarised) the first and last [`EDGE`] along each longer dim,
/// cut out on the tensor's device so that only those are copied to the host.
fn shown(t: &Tensor) -> Result<Shown> {
    let _no_grad = crate::no_grad();
    let summarise = t.numel() > THRESHOLD;
    let mut kept = t.clone();
    let mut dims = Vec::with_capacity(t.dims());
    for (d, &n) in t.shape().iter().enumerate() {
        if summarise && n > 2 * EDGE {
            let d = d as isize;
            kept = Tensor::cat(&[kept.narrow(d, 0, EDGE)?, kept.narrow(d, n - EDGE, EDGE)?], d)?;
            dims.push((2 * EDGE, true));
        } else {
            dims.push((n, false));
        }
    }
    Ok(Shown {
        values: kept.to_dtype(DType::F64)?.to_vec::<f64>()?,
        dims,
    })
}

/// `1.0000e+00`: Rust's `{:.4e}` with PyTorch's signed two-digit exponent.
fn scientific(v: f64) -> String {
    let s = format!("{v:.4e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s, // nan, inf
    }
}

/// How every element of one tensor is written (PyTorch's `_Formatter`): one style for all.
fn formatter(values: &[f64], is_float: bool) -> impl Fn(f64) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let nonzero: Vec<f64> = finite.iter().map(|v| v.abs()).filter(|&v| v > 0.0).collect();
    let (min, max) = nonzero
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let whole = finite.iter().all(|v| v.fract() == 0.0);
    let wide = !nonzero.is_empty() && (max / min > 1000.0 || max > 1e8);
    #[derive(Clone, Copy)]
    enum Style {
        Integer,
        WholeFloat,
        Fixed,
        Scientific,
    }
    let style = if !is_float {
        Style::Integer
    } else if wide || (!whole && !nonzero.is_empty() && min < 1e-4) {
        Style::Scientific
    } else if whole {
        Style::WholeFloat
    } else {
        Style::Fixed
    };
    move |v: f64| {
        if v.is_nan() {
            return "nan".into();
        }
        if v.is_infinite() {
            return if v > 0.0 { "inf".into() } else { "-inf".into() };
        }
        match style {
            Style::Integer => format!("{v:.0}"),
            Style::WholeFloat => format!("{v:.0}."),
            Style::Fixed => format!("{v:.4}"),
            Style::Scientific => scientific(v),
        }
    }
}

/// Writes the entries of dims `dims` (the tail of the shape) starting at `values[0]`, each element
/// right-aligned to `width`; `indent` is the column of this level's opening bracket + 1.
fn write_level(out: &mut String, values: &[String], dims: &[(usize, bool)], width: usize, indent: usize) {
    let Some((&(n, elided), inner)) = dims.split_first() else {
        out.push_str(&format!("{:>width$}", values[0]));
        return;
    };
    let block: usize = inner.iter().map(|&(k, _)| k).product();
    // between rows: a comma, a newline per remaining dim (a blank line between matrices), indent
    let separator = if inner.is_empty() {
        ", ".to_string()
    } else {
        format!(",{}{}", "\n".repeat(inner.len()), " ".repeat(indent))
    };
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push_str(&separator);
        }
        if elided && i == n / 2 {
            // PyTorch's token: " ..." among the numbers of a row, "..." for a row of rows
            out.push_str(if inner.is_empty() { " ..." } else { "..." });
            out.push_str(&separator);
        }
        write_level(out, &values[i * block..], inner, width, indent + 1);
    }
    out.push(']');
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = match shown(self) {
            Ok(s) => s,
            // a tensor whose values cannot be read (a lost device): say what it is
            Err(e) => return write!(f, "tensor(<{e}>, shape={:?}, dtype={})", self.shape(), self.dtype()),
        };
        let format = formatter(&shown.values, self.dtype().is_float());
        let strings: Vec<String> = shown.values.iter().map(|&v| format(v)).collect();
        let width = strings.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let mut out = String::from("tensor(");
        if self.numel() == 0 {
            out.push_str(&"[".repeat(self.dims().max(1)));
            out.push_str(&"]".repeat(self.dims().max(1)));
        } else {
            write_level(&mut out, &strings, &shown.dims, width, "tensor(".len() + 1);
        }
        let default_dtype = if self.dtype().is_float() {
            DType::F32
        } else {
            DType::U32
        };
        if self.dtype() != default_dtype {
            out.push_str(&format!(", dtype={}", self.dtype()));
        }
        if *self.device() != Device::Cpu {
            out.push_str(&format!(", device={}", self.device()));
        }
        out.push(')');
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    fn show<T: crate::WithDType>(v: Vec<T>, shape: &[usize]) -> String {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_string()
    }

    // The expected strings are what PyTorch 2 prints for the same values (torch.tensor(...),
    // dtype float32 or int64; kiln's index dtype u32 plays int64's part).
    #[test]
    fn integers_print_as_integers() {
        assert_eq!(show(vec![1u32, 2, 3], &[3]), "tensor([1, 2, 3])");
        assert_eq!(show(vec![7u32], &[]), "tensor(7)");
        assert_eq!(
            show(vec![1u32, 20, 3, 400], &[2, 2]),
            "tensor([[  1,  20],\n        [  3, 400]])"
        );
    }

    #[test]
    fn floats_print_with_four_decimals_or_in_scientific_notation() {
        assert_eq!(show(vec![1.5f32, -2.25], &[2]), "tensor([ 1.5000, -2.2500])");
        assert_eq!(show(vec![1f32, 2.], &[2]), "tensor([1., 2.])");
        assert_eq!(show(vec![0.5f32], &[]), "tensor(0.5000)");
        assert_eq!(show(vec![1e-5f32, 1.], &[2]), "tensor([1.0000e-05, 1.0000e+00])");
        assert_eq!(show(vec![f32::NAN, 1.5], &[2]), "tensor([   nan, 1.5000])");
        assert_eq!(show(vec![0.5f64], &[1]), "tensor([0.5000], dtype=f64)");
    }

    #[test]
    fn matrices_print_one_row_per_line_and_blank_lines_between_matrices() {
        let v: Vec<u32> = (0..8).collect();
        assert_eq!(
            show(v, &[2, 2, 2]),
            "tensor([[[0, 1],\n         [2, 3]],\n\n        [[4, 5],\n         [6, 7]]])"
        );
    }

    #[test]
    fn large_tensors_are_summarised_to_their_edges() {
        // torch.arange(2000).reshape(40, 50)
        let v: Vec<u32> = (0..2000).collect();
        assert_eq!(
            show(v, &[40, 50]),
            "tensor([[   0,    1,    2,  ...,   47,   48,   49],\n        [  50,   51,   52,  ...,   97,   98,   99],\n        [ 100,  101,  102,  ...,  147,  148,  149],\n        ...,\n        [1850, 1851, 1852,  ..., 1897, 1898, 1899],\n        [1900, 1901, 1902,  ..., 1947, 1948, 1949],\n        [1950, 1951, 1952,  ..., 1997, 1998, 1999]])"
        );
    }

    #[test]
    fn empty_tensors_print_empty_brackets() {
        let t = Tensor::zeros(&[0], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.to_string(), "tensor([])");
    }
}
