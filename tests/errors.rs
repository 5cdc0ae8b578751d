//! Every error path a user can reach: the right `kiln::Error` variant, and a message that
//! names the operation and its operands (shapes, dtypes, dims, values), so the faulty call
//! can be found without a debugger. Plus a property test: random, often invalid, shapes
//! fed to the shape-checking ops give `Ok` or `Err`, never a panic, and `Ok` exactly when
//! the shapes are valid.

use kiln::{DType, Device, Error, Result, Rng, Tensor};
use proptest::prelude::*;

const DEV: Device = Device::Cpu;

fn t(shape: &[usize]) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::from_vec((0..n).map(|i| i as f32 * 0.25).collect::<Vec<f32>>(), shape, &DEV).unwrap()
}

fn t64(shape: &[usize]) -> Tensor {
    t(shape).to_dtype(DType::F64).unwrap()
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()], &DEV).unwrap()
}

/// The error of a call that must fail.
fn err<T>(r: Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e,
    }
}

/// The message mentions every part (case-insensitively, so `F32` and `f32` both count).
fn mentions(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    let lower = msg.to_lowercase();
    for p in parts {
        assert!(
            lower.contains(&p.to_lowercase()),
            "message {msg:?} does not mention {p:?}"
        );
    }
}

fn is_shape(e: &Error, op: &str) -> bool {
    matches!(e, Error::Shape { op: o, .. } if *o == op)
}

fn is_dtype(e: &Error, op: &str) -> bool {
    matches!(e, Error::DType { op: o, .. } if *o == op)
}

fn is_index(e: &Error, op: &str) -> bool {
    matches!(e, Error::Index { op: o, .. } if *o == op)
}

fn is_invalid(e: &Error, op: &str) -> bool {
    matches!(e, Error::Invalid { op: o, .. } if *o == op)
}

fn is_autograd(e: &Error) -> bool {
    matches!(e, Error::Autograd(_))
}

// ------------------------------------------------------------------------------------------
// matmul
// ------------------------------------------------------------------------------------------

#[test]
fn attention_shapes_dtypes_and_devices() {
    const OP: &str = "scaled_dot_product_attention";
    let (q, kv) = (t(&[2, 3, 4, 8]), t(&[2, 3, 6, 8]));
    let e = err(t(&[3, 4, 8]).scaled_dot_product_attention(&kv, &kv, false), "rank 3");
    assert!(is_shape(&e, OP), "{e:?}");
    mentions(&e, &[OP, "[3, 4, 8]", "rank 4"]);
    let e = err(
        q.scaled_dot_product_attention(&t(&[2, 3, 6, 5]), &t(&[2, 3, 6, 5]), false),
        "head dims",
    );
    assert!(is_shape(&e, OP), "{e:?}");
    mentions(&e, &["[2, 3, 4, 8]", "[2, 3, 6, 5]"]);
    let e = err(
        q.scaled_dot_product_attention(&kv, &t(&[2, 3, 7, 8]), false),
        "k and v lengths",
    );
    mentions(&e, &["[2, 3, 6, 8]", "[2, 3, 7, 8]"]);
    let e = err(
        q.scaled_dot_product_attention(&t(&[1, 3, 6, 8]), &t(&[1, 3, 6, 8]), false),
        "batch",
    );
    assert!(is_shape(&e, OP), "{e:?}");
    // grouped-query attention: the key/value heads must divide the query heads
    for kv_heads in [2, 4] {
        let kv = t(&[2, kv_heads, 6, 8]);
        let e = err(q.scaled_dot_product_attention(&kv, &kv, false), "kv heads");
        assert!(is_shape(&e, OP), "{e:?}");
        mentions(&e, &["Hkv", "H = 3", &format!("[2, {kv_heads}, 6, 8]")]);
    }
    let e = err(
        t(&[1, 1, 5, 8]).scaled_dot_product_attention(&t(&[1, 1, 3, 8]), &t(&[1, 1, 3, 8]), true),
        "causal tq > tk",
    );
    assert!(is_shape(&e, OP), "{e:?}");
    mentions(&e, &["causal", "Tq = 5", "Tk = 3"]);
    let e = err(
        q.scaled_dot_product_attention(&t(&[2, 3, 0, 8]), &t(&[2, 3, 0, 8]), false),
        "no keys",
    );
    mentions(&e, &["Tk", "[2, 3, 0, 8]"]);
    let e = err(
        q.scaled_dot_product_attention(&kv.to_dtype(DType::F64).unwrap(), &kv, false),
        "dtypes",
    );
    assert!(is_dtype(&e, OP), "{e:?}");
    mentions(&e, &["f32", "f64"]);
    let u = q.to_dtype(DType::U32).unwrap();
    let e = err(u.scaled_dot_product_attention(&u, &u, false), "u32");
    assert!(is_dtype(&e, OP), "{e:?}");
    // the kernels hold head dims up to 128 in registers
    let (q, kv) = (
        t(&[1, 1, 2, 130]).to_device(&Device::Emu).unwrap(),
        t(&[1, 1, 3, 130]).to_device(&Device::Emu).unwrap(),
    );
    let e = err(q.scaled_dot_product_attention(&kv, &kv, false), "head dim 130 on emu");
    assert!(is_invalid(&e, OP), "{e:?}");
    mentions(&e, &["130", "128", "emu"]);
    let e = err(
        q.scaled_dot_product_attention(&t(&[1, 1, 3, 130]), &kv, false),
        "devices",
    );
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e:?}");
}

#[test]
fn matmul_inner_dimension_mismatch() {
    let e = err(t(&[2, 3]).matmul(&t(&[4, 5])), "matmul [2,3] x [4,5]");
    assert!(is_shape(&e, "matmul"), "{e:?}");
    assert_eq!(
        e.to_string(),
        "matmul: lhs [2, 3] and rhs [4, 5]: inner dimensions 3 and 4 differ"
    );
    let e = err(t(&[7, 2, 3]).matmul(&t(&[7, 2, 3])), "batched");
    assert!(is_shape(&e, "matmul"));
    mentions(&e, &["matmul", "[7, 2, 3]", "3 and 2"]);
}

#[test]
fn matmul_needs_two_dims() {
    for (a, b) in [(vec![3], vec![3, 2]), (vec![2, 3], vec![3]), (vec![], vec![2, 2])] {
        let e = err(t(&a).matmul(&t(&b)), "rank < 2");
        assert!(is_shape(&e, "matmul"), "{e:?}");
        mentions(&e, &["matmul", &format!("{a:?}"), &format!("{b:?}"), "2 dimensions"]);
    }
}

#[test]
fn matmul_batch_dims_that_do_not_broadcast() {
    let e = err(t(&[2, 3, 4]).matmul(&t(&[3, 4, 5])), "batch 2 vs 3");
    assert!(is_shape(&e, "matmul"), "{e:?}");
    mentions(&e, &["matmul", "[2, 3, 4]", "[3, 4, 5]", "batch"]);
}

#[test]
fn matmul_dtypes() {
    let e = err(t(&[2, 3]).matmul(&t64(&[3, 2])), "f32 x f64");
    assert!(is_dtype(&e, "matmul"), "{e:?}");
    mentions(&e, &["matmul", "f32", "f64"]);
    let u = Tensor::from_vec(vec![1u32; 4], &[2, 2], &DEV).unwrap();
    let e = err(u.matmul(&u), "u32 matmul");
    assert!(is_dtype(&e, "matmul"), "{e:?}");
    mentions(&e, &["matmul", "u32"]);
}

// ------------------------------------------------------------------------------------------
// Elementwise
// ------------------------------------------------------------------------------------------

#[test]
fn binary_broadcast_failure() {
    type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Binary); 7] = [
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
        ("maximum", Tensor::maximum),
        ("minimum", Tensor::minimum),
        ("lt", Tensor::lt),
    ];
    for (name, op) in ops {
        let e = err(op(&t(&[2, 3]), &t(&[4, 3])), name);
        assert!(is_shape(&e, name), "{name}: {e:?}");
        mentions(&e, &[name, "[2, 3]", "[4, 3]"]);
        let e = err(op(&t(&[5, 1, 3]), &t(&[4, 2])), name);
        mentions(&e, &[name, "[5, 1, 3]", "[4, 2]"]);
    }
}

#[test]
fn binary_dtype_mismatch() {
    let e = err(t(&[2]).add(&t64(&[2])), "f32 + f64");
    assert!(is_dtype(&e, "add"), "{e:?}");
    mentions(&e, &["add", "f32", "f64"]);
    let e = err(t64(&[2, 2]).mul(&t(&[2])), "f64 * f32 broadcast");
    assert!(is_dtype(&e, "mul"), "{e:?}");
    mentions(&e, &["mul", "f64", "f32"]);
    let bf = t(&[2]).to_dtype(DType::BF16).unwrap();
    let e = err(bf.gt(&t(&[2])), "bf16 > f32");
    assert!(is_dtype(&e, "gt"), "{e:?}");
    mentions(&e, &["gt", "bf16", "f32"]);
}

#[test]
fn gelu_backward_needs_matching_operands_and_has_no_derivative() {
    let e = err(t(&[2, 3]).gelu_backward(&t(&[3, 2])), "gelu_backward of two shapes");
    assert!(is_shape(&e, "gelu_backward"), "{e:?}");
    mentions(&e, &["gelu_backward", "[2, 3]", "[3, 2]"]);
    let e = err(t(&[2]).gelu_backward(&t64(&[2])), "gelu_backward f32 and f64");
    assert!(is_dtype(&e, "gelu_backward"), "{e:?}");
    mentions(&e, &["gelu_backward", "f32", "f64"]);
    let u = Tensor::from_vec(vec![1u32, 2], &[2], &DEV).unwrap();
    let e = err(u.gelu_backward(&u), "gelu_backward of u32");
    assert!(is_dtype(&e, "gelu_backward"), "{e:?}");
    mentions(&e, &["gelu_backward", "u32"]);
    // a backward through GELU's backward is refused, not silently zero
    let z = t(&[3]).requires_grad();
    let dx = t(&[3]).gelu_backward(&z).unwrap();
    let e = err(dx.sum_all().unwrap().backward(), "a second derivative of gelu");
    assert!(is_invalid(&e, "gelu_backward"), "{e:?}");
    mentions(&e, &["gelu_backward", "derivative"]);
}

#[test]
fn u32_in_float_ops() {
    let u = Tensor::from_vec(vec![1u32, 2, 3], &[3], &DEV).unwrap();
    type Unary = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Unary); 9] = [
        ("exp", |x| x.exp()),
        ("log", |x| x.log()),
        ("tanh", |x| x.tanh()),
        ("gelu", |x| x.gelu()),
        ("relu", |x| x.relu()),
        ("affine", |x| x.mul_scalar(2.0)),
        ("softmax", |x| x.softmax(0)),
        ("sum", |x| x.sum_all()),
        ("add", |x| x.add(x)),
    ];
    for (name, op) in ops {
        let e = err(op(&u), name);
        assert!(is_dtype(&e, name), "{name}: {e:?}");
        mentions(&e, &[name, "u32", "floating-point"]);
    }
    let e = err(Tensor::randn(&[2], DType::U32, &mut Rng::new(0), &DEV), "randn u32");
    assert!(is_dtype(&e, "randn"), "{e:?}");
    let e = err(u.layer_norm(&u, &u, 1e-5), "u32 layer_norm");
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    mentions(&e, &["layer_norm", "u32"]);
}

// ------------------------------------------------------------------------------------------
// Devices
// ------------------------------------------------------------------------------------------

/// Creating a tensor on a device that is not built or not present is a clear error, never a
/// panic. Today only the CPU backend exists, so Emu and Cuda refuse with DeviceUnavailable;
/// once a backend lands, creation succeeds and the tensor reports that device.
#[test]
fn unavailable_devices_are_a_clear_error() {
    for dev in [Device::Emu, Device::Cuda(0), Device::Cuda(7)] {
        let attempts: [(&str, Result<Tensor>); 4] = [
            ("zeros", Tensor::zeros(&[2, 3], DType::F32, &dev)),
            ("from_vec", Tensor::from_vec(vec![1f32, 2.], &[2], &dev)),
            ("randn", Tensor::randn(&[2], DType::F32, &mut Rng::new(0), &dev)),
            ("to_device", t(&[2]).to_device(&dev)),
        ];
        for (what, r) in attempts {
            match r {
                Ok(x) => assert_eq!(x.device(), &dev, "{what} on {dev:?} gave a tensor elsewhere"),
                Err(e) => {
                    assert!(
                        matches!(e, Error::DeviceUnavailable { device, .. } if device == dev),
                        "{what} on {dev:?}: {e:?}"
                    );
                    mentions(&e, &[&format!("{dev:?}"), "unavailable"]);
                }
            }
        }
    }
}

/// Mixing devices in one op: only testable once a second device can hold a tensor.
#[test]
fn device_mismatch_when_a_second_device_exists() {
    let Ok(other) = Tensor::zeros(&[2], DType::F32, &Device::Emu) else {
        eprintln!("skipping device mismatch: Device::Emu is not available in this build");
        return;
    };
    let e = err(t(&[2]).add(&other), "cpu + emu");
    assert!(matches!(e, Error::DeviceMismatch { op: "add", .. }), "{e:?}");
    mentions(&e, &["add", "Cpu", "Emu"]);
}

#[test]
fn unknown_device_names() {
    for s in ["tpu", "cuda:", "cuda:x", "CPU0"] {
        let e = err(s.parse::<Device>(), s);
        assert!(is_invalid(&e, "device"), "{e:?}");
        mentions(&e, &[s]);
    }
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
}

// ------------------------------------------------------------------------------------------
// Dims and shapes
// ------------------------------------------------------------------------------------------

fn assert_dim_error(e: &Error, op: &str, dim: isize, shape: &[usize]) {
    match e {
        Error::Dim {
            op: o,
            dim: d,
            rank,
            shape: s,
        } => {
            assert_eq!((*o, *d, *rank, s.as_slice()), (op, dim, shape.len(), shape));
        }
        other => panic!("{op} dim {dim}: expected Error::Dim, got {other:?}"),
    }
    mentions(e, &[op, &format!("dimension {dim}"), &format!("{shape:?}")]);
}

#[test]
fn dim_out_of_range_positive_and_negative() {
    let x = t(&[2, 3]);
    for dim in [2isize, 3, -3, 100, isize::MIN, isize::MAX] {
        assert_dim_error(&err(x.softmax(dim), "softmax"), "softmax", dim, &[2, 3]);
        assert_dim_error(&err(x.log_softmax(dim), "log_softmax"), "log_softmax", dim, &[2, 3]);
        assert_dim_error(&err(x.sum(&[0, dim], false), "sum"), "sum", dim, &[2, 3]);
        assert_dim_error(&err(x.mean(&[dim], true), "mean"), "mean", dim, &[2, 3]);
        assert_dim_error(&err(x.max(&[dim], false), "max"), "max", dim, &[2, 3]);
        assert_dim_error(&err(x.min(&[dim], false), "min"), "min", dim, &[2, 3]);
        assert_dim_error(&err(x.transpose(0, dim), "transpose"), "transpose", dim, &[2, 3]);
        assert_dim_error(&err(x.narrow(dim, 0, 1), "narrow"), "narrow", dim, &[2, 3]);
        assert_dim_error(&err(x.squeeze(dim), "squeeze"), "squeeze", dim, &[2, 3]);
        assert_dim_error(
            &err(x.index_select(dim, &ids(&[0])), "index_select"),
            "index_select",
            dim,
            &[2, 3],
        );
        assert_dim_error(
            &err(Tensor::cat(std::slice::from_ref(&x), dim), "cat"),
            "cat",
            dim,
            &[2, 3],
        );
        assert_dim_error(&err(x.dim(dim), "dim"), "dim", dim, &[2, 3]);
    }
    // unsqueeze accepts 0..=rank (and -rank-1..=-1).
    for dim in [3isize, -4, isize::MIN, isize::MAX] {
        assert_dim_error(&err(x.unsqueeze(dim), "unsqueeze"), "unsqueeze", dim, &[2, 3]);
    }
    assert_eq!(x.unsqueeze(2).unwrap().shape(), &[2, 3, 1]);
    assert_eq!(x.unsqueeze(-3).unwrap().shape(), &[1, 2, 3]);
    // A scalar has no dims at all.
    let s = t(&[]);
    assert_dim_error(&err(s.softmax(0), "softmax of a scalar"), "softmax", 0, &[]);
    assert_dim_error(&err(s.softmax(-1), "softmax of a scalar"), "softmax", -1, &[]);
}

#[test]
fn repeated_reduction_dims() {
    let e = err(t(&[2, 3]).sum(&[1, -1], false), "sum dims [1, -1]");
    assert!(is_invalid(&e, "sum"), "{e:?}");
    mentions(&e, &["sum", "[1, -1]", "twice", "[2, 3]"]);
}

#[test]
fn reshape_with_the_wrong_element_count() {
    let e = err(t(&[2, 3]).reshape(&[4, 2]), "reshape");
    assert!(is_shape(&e, "reshape"), "{e:?}");
    mentions(&e, &["reshape", "[2, 3]", "[4, 2]", "6", "8"]);
    let e = err(t(&[2, 3]).reshape(&[]), "reshape to a scalar");
    mentions(&e, &["reshape", "[2, 3]", "[]"]);
    let e = err(t(&[2, 3]).transpose(0, 1).unwrap().reshape(&[7]), "reshape of a view");
    mentions(&e, &["reshape", "[3, 2]", "[7]"]);
}

/// Shapes whose element count overflows usize must be refused, not wrapped around (in a
/// release build a wrapped product can equal the real count, e.g. 2^63 · 2 = 0).
#[test]
fn element_count_overflow() {
    let huge = [1usize << 63, 2];
    let e = err(t(&[0]).reshape(&huge), "reshape [0] to [2^63, 2]");
    assert!(is_shape(&e, "reshape"), "{e:?}");
    mentions(&e, &["reshape", "overflow"]);
    let e = err(Tensor::from_vec(Vec::<f32>::new(), &huge, &DEV), "from_vec");
    assert!(is_shape(&e, "from_vec"), "{e:?}");
    mentions(&e, &["from_vec", "overflow"]);
    let e = err(Tensor::zeros(&[usize::MAX, usize::MAX, 0], DType::F32, &DEV), "zeros");
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    mentions(&e, &["overflow"]);
    let e = err(t(&[1]).broadcast_to(&[1 << 40, 1 << 40]), "broadcast_to");
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    mentions(&e, &["broadcast_to", "overflow"]);
}

#[test]
fn narrow_out_of_bounds() {
    let x = t(&[4, 5]);
    for (dim, start, len) in [(1isize, 3usize, 3usize), (0, 5, 0), (-1, 0, 6), (0, usize::MAX, 2)] {
        let e = err(x.narrow(dim, start, len), "narrow");
        assert!(is_index(&e, "narrow"), "{e:?}");
        mentions(&e, &["narrow", &format!("range {start}.."), "[4, 5]"]);
    }
    // The edges that are valid.
    assert_eq!(x.narrow(1, 5, 0).unwrap().shape(), &[4, 0]);
    assert_eq!(x.narrow(-1, 4, 1).unwrap().shape(), &[4, 1]);
}

#[test]
fn permute_with_a_non_permutation() {
    let x = t(&[2, 3, 4]);
    for dims in [
        vec![0, 0, 1],
        vec![0, 1],
        vec![0, 1, 2, 3],
        vec![0, 1, 3],
        vec![usize::MAX, 0, 1],
    ] {
        let e = err(x.permute(&dims), "permute");
        assert!(is_shape(&e, "permute"), "{e:?}");
        mentions(&e, &["permute", &format!("{dims:?}"), "[2, 3, 4]"]);
    }
}

#[test]
fn squeeze_of_a_dim_that_is_not_one() {
    let e = err(t(&[2, 1, 3]).squeeze(2), "squeeze");
    assert!(is_shape(&e, "squeeze"), "{e:?}");
    mentions(&e, &["squeeze", "[2, 1, 3]", "size 3"]);
}

#[test]
fn broadcast_to_an_incompatible_shape() {
    let e = err(t(&[3, 2]).broadcast_to(&[3, 3]), "broadcast_to");
    assert!(is_shape(&e, "broadcast_to"), "{e:?}");
    mentions(&e, &["broadcast_to", "[3, 2]", "[3, 3]"]);
    let e = err(t(&[2, 3]).broadcast_to(&[3]), "broadcast_to lower rank");
    mentions(&e, &["broadcast_to", "[2, 3]", "[3]"]);
}

#[test]
fn cat_of_mismatched_tensors() {
    let e = err(Tensor::cat(&[t(&[2, 3]), t(&[2, 4])], 0), "cat shapes");
    assert!(is_shape(&e, "cat"), "{e:?}");
    mentions(&e, &["cat", "[2, 3]", "[2, 4]"]);
    let e = err(Tensor::cat(&[t(&[2, 3]), t(&[2, 3, 1])], 1), "cat ranks");
    assert!(is_shape(&e, "cat"), "{e:?}");
    mentions(&e, &["cat", "[2, 3]", "[2, 3, 1]"]);
    let e = err(Tensor::cat(&[t(&[2, 3]), t64(&[2, 3])], 0), "cat dtypes");
    assert!(is_dtype(&e, "cat"), "{e:?}");
    mentions(&e, &["cat", "f32", "f64"]);
    let e = err(Tensor::cat(&[], 0), "cat of nothing");
    assert!(is_invalid(&e, "cat"), "{e:?}");
    mentions(&e, &["cat", "at least one"]);
}

#[test]
fn from_vec_with_the_wrong_length() {
    let e = err(Tensor::from_vec(vec![1f32; 5], &[2, 3], &DEV), "from_vec");
    assert!(is_shape(&e, "from_vec"), "{e:?}");
    mentions(&e, &["from_vec", "5", "[2, 3]", "6"]);
    let e = err(Tensor::from_vec(vec![0f64; 2], &[], &DEV), "two values for a scalar");
    mentions(&e, &["from_vec", "2", "[]"]);
}

// ------------------------------------------------------------------------------------------
// Indexing
// ------------------------------------------------------------------------------------------

#[test]
fn index_select_ids_out_of_range_or_malformed() {
    let x = t(&[4, 3]);
    let e = err(x.index_select(0, &ids(&[0, 4, 1])), "id 4 of 4");
    assert!(is_index(&e, "index_select"), "{e:?}");
    mentions(&e, &["index_select", "index 4", "position 1", "size 4"]);
    let e = err(x.index_select(-1, &ids(&[u32::MAX])), "id u32::MAX");
    mentions(&e, &["index_select", &u32::MAX.to_string(), "size 3"]);
    let e = err(x.index_select(0, &t(&[2])), "f32 ids");
    assert!(is_dtype(&e, "index_select"), "{e:?}");
    mentions(&e, &["index_select", "u32", "f32"]);
    let two_d = Tensor::from_vec(vec![0u32; 4], &[2, 2], &DEV).unwrap();
    let e = err(x.index_select(0, &two_d), "2-D ids");
    assert!(is_shape(&e, "index_select"), "{e:?}");
    mentions(&e, &["index_select", "1-D", "[2, 2]"]);
}

#[test]
fn embedding_ids_out_of_range_or_malformed() {
    let table = t(&[5, 3]);
    let id = Tensor::from_vec(vec![0u32, 1, 5, 2], &[2, 2], &DEV).unwrap();
    let e = err(id.embedding(&table), "id 5 of vocab 5");
    assert!(matches!(e, Error::Index { .. }), "{e:?}");
    mentions(&e, &["embedding", "5"]);
    let e = err(t(&[2]).embedding(&table), "f32 ids");
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    mentions(&e, &["embedding", "u32", "f32"]);
    let e = err(ids(&[0]).embedding(&t(&[5])), "1-D table");
    assert!(is_shape(&e, "embedding"), "{e:?}");
    mentions(&e, &["embedding", "[vocab, C]", "[5]"]);
}

#[test]
fn where_cond_with_bad_operands() {
    let e = err(t(&[2]).where_cond(&t(&[2]), &t(&[2])), "f32 condition");
    assert!(is_dtype(&e, "where_cond"), "{e:?}");
    mentions(&e, &["where_cond", "u32", "f32"]);
    let c = ids(&[1, 0]);
    let e = err(c.where_cond(&t(&[2]), &t64(&[2])), "branches f32 / f64");
    assert!(is_dtype(&e, "where_cond"), "{e:?}");
    mentions(&e, &["where_cond", "f32", "f64"]);
    let e = err(c.where_cond(&t(&[3]), &t(&[2])), "shapes");
    assert!(is_shape(&e, "where_cond"), "{e:?}");
    mentions(&e, &["where_cond", "[2]", "[3]"]);
    let e = err(t(&[3]).masked_fill(&ids(&[1, 0]), 0.0), "masked_fill shapes");
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    mentions(&e, &["[2]", "[3]"]);
}

// ------------------------------------------------------------------------------------------
// Losses and normalisation
// ------------------------------------------------------------------------------------------

#[test]
fn cross_entropy_bad_targets() {
    let logits = t(&[3, 4]);
    let e = err(logits.cross_entropy(&ids(&[0, 4, 1])), "target 4 of 4 classes");
    assert!(is_index(&e, "cross_entropy"), "{e:?}");
    mentions(&e, &["cross_entropy", "target 4", "row 1", "4 classes"]);
    let e = err(logits.cross_entropy(&ids(&[0, 1])), "2 targets for 3 rows");
    assert!(is_shape(&e, "cross_entropy"), "{e:?}");
    mentions(&e, &["cross_entropy", "[3, 4]", "[3]", "[2]"]);
    let e = err(logits.cross_entropy(&t(&[3])), "f32 targets");
    assert!(is_dtype(&e, "cross_entropy"), "{e:?}");
    mentions(&e, &["cross_entropy", "u32", "f32"]);
    let e = err(
        logits.cross_entropy_with_ignore(&ids(&[7, 7, 7]), Some(7)),
        "all ignored",
    );
    assert!(is_invalid(&e, "cross_entropy"), "{e:?}");
    mentions(&e, &["cross_entropy", "all 3 targets", "ignore"]);
    let e = err(t(&[2, 3, 4]).cross_entropy(&ids(&[0, 1])), "3-D logits");
    assert!(is_shape(&e, "cross_entropy"), "{e:?}");
    mentions(&e, &["cross_entropy", "[N, C]", "[2, 3, 4]"]);
    // An out-of-range target on an ignored row is fine; on a counted row it is not.
    assert!(logits.cross_entropy_with_ignore(&ids(&[9, 1, 2]), Some(9)).is_ok());
    let e = err(logits.cross_entropy_with_ignore(&ids(&[9, 1, 8]), Some(9)), "target 8");
    mentions(&e, &["cross_entropy", "target 8", "row 2"]);
}

#[test]
fn layer_norm_bad_parameters() {
    let x = t(&[2, 4]);
    let e = err(x.layer_norm(&t(&[3]), &t(&[4]), 1e-5), "weight [3]");
    assert!(is_shape(&e, "layer_norm"), "{e:?}");
    mentions(&e, &["layer_norm", "weight", "[4]", "[3]", "[2, 4]"]);
    let e = err(x.layer_norm(&t(&[4]), &t(&[1, 4]), 1e-5), "bias [1, 4]");
    mentions(&e, &["layer_norm", "bias", "[1, 4]"]);
    let e = err(x.layer_norm_no_bias(&t(&[2, 4]), 1e-5), "no-bias weight [2, 4]");
    mentions(&e, &["layer_norm", "weight", "[2, 4]"]);
    let e = err(x.layer_norm(&t64(&[4]), &t(&[4]), 1e-5), "f64 weight");
    assert!(is_dtype(&e, "layer_norm"), "{e:?}");
    mentions(&e, &["layer_norm", "f32", "f64"]);
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY] {
        let e = err(x.layer_norm(&t(&[4]), &t(&[4]), eps), "bad eps");
        assert!(is_invalid(&e, "layer_norm"), "{e:?}");
        mentions(&e, &["layer_norm", "eps", &format!("{eps}")]);
    }
    let e = err(t(&[]).layer_norm(&t(&[1]), &t(&[1]), 1e-5), "scalar input");
    assert!(is_shape(&e, "layer_norm"), "{e:?}");
    mentions(&e, &["layer_norm", "scalar"]);
}

#[test]
fn rms_norm_bad_parameters() {
    let x = t(&[2, 4]);
    let e = err(x.rms_norm(&t(&[3]), 1e-5), "weight [3]");
    assert!(is_shape(&e, "rms_norm"), "{e:?}");
    mentions(&e, &["rms_norm", "weight", "[4]", "[3]", "[2, 4]"]);
    let e = err(x.rms_norm(&t64(&[4]), 1e-5), "f64 weight");
    assert!(is_dtype(&e, "rms_norm"), "{e:?}");
    mentions(&e, &["rms_norm", "f32", "f64"]);
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY] {
        let e = err(x.rms_norm(&t(&[4]), eps), "bad eps");
        assert!(is_invalid(&e, "rms_norm"), "{e:?}");
        mentions(&e, &["rms_norm", "eps", &format!("{eps}")]);
    }
    let e = err(t(&[]).rms_norm(&t(&[1]), 1e-5), "scalar input");
    assert!(is_shape(&e, "rms_norm"), "{e:?}");
    let u = Tensor::from_vec(vec![1u32; 4], &[4], &DEV).unwrap();
    let e = err(u.rms_norm(&u, 1e-5), "u32 rms_norm");
    assert!(is_dtype(&e, "rms_norm"), "{e:?}");
}

#[test]
fn swiglu_bad_operands() {
    let e = err(t(&[2, 4]).swiglu(&t(&[4, 2])), "shapes differ");
    assert!(is_shape(&e, "swiglu"), "{e:?}");
    mentions(&e, &["swiglu", "gate", "[2, 4]", "[4, 2]"]);
    let e = err(t(&[3]).swiglu(&t64(&[3])), "dtypes differ");
    assert!(is_dtype(&e, "swiglu"), "{e:?}");
    let u = Tensor::from_vec(vec![1u32; 3], &[3], &DEV).unwrap();
    let e = err(u.swiglu(&u), "u32");
    assert!(is_dtype(&e, "swiglu"), "{e:?}");
}

#[test]
fn rope_bad_inputs() {
    use kiln::ops::rope::RopeLayout;
    let e = err(t(&[2, 3, 4]).rope(1e4, 0, RopeLayout::Half), "rank 3");
    assert!(is_shape(&e, "rope"), "{e:?}");
    mentions(&e, &["rope", "[batch, seq, heads, head_dim]", "[2, 3, 4]"]);
    let e = err(t(&[1, 2, 3, 5]).rope(1e4, 0, RopeLayout::Interleaved), "odd head_dim");
    assert!(is_shape(&e, "rope"), "{e:?}");
    mentions(&e, &["rope", "even", "5"]);
    for base in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = err(t(&[1, 2, 3, 4]).rope(base, 0, RopeLayout::Half), "bad base");
        assert!(is_invalid(&e, "rope"), "{e:?}");
        mentions(&e, &["rope", "base", &format!("{base}")]);
    }
    let e = err(
        t(&[1, 2, 1, 2]).rope(1e4, usize::MAX, RopeLayout::Half),
        "offset overflows",
    );
    assert!(is_invalid(&e, "rope"), "{e:?}");
    mentions(&e, &["rope", "positions", "2^24"]);
    let u = Tensor::from_vec(vec![1u32; 4], &[1, 1, 2, 2], &DEV).unwrap();
    let e = err(u.rope(1e4, 0, RopeLayout::Half), "u32");
    assert!(is_dtype(&e, "rope"), "{e:?}");
}

#[test]
fn dropout_p_outside_zero_one() {
    for p in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
        let e = err(t(&[4]).dropout(p, true, &mut Rng::new(0)), "dropout");
        assert!(is_invalid(&e, "dropout"), "{e:?}");
        mentions(&e, &["dropout", &format!("{p}"), "[0, 1)"]);
        // Refused in evaluation mode too: a bad p is a bug whatever the mode.
        assert!(
            t(&[4]).dropout(p, false, &mut Rng::new(0)).is_err(),
            "p = {p} in eval mode"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Autograd
// ------------------------------------------------------------------------------------------

#[test]
fn backward_of_a_non_scalar() {
    let x = t(&[2, 3]).requires_grad();
    let e = err(x.exp().unwrap().backward(), "backward of [2, 3]");
    assert!(is_autograd(&e), "{e:?}");
    mentions(&e, &["backward", "scalar", "[2, 3]"]);
}

#[test]
fn backward_with_no_tracked_input() {
    let e = err(t(&[2]).sum_all().unwrap().backward(), "constant loss");
    assert!(is_autograd(&e), "{e:?}");
    mentions(&e, &["backward", "requires_grad"]);
    let x = t(&[2]).requires_grad();
    let loss = {
        let _g = kiln::no_grad();
        x.sum_all().unwrap()
    };
    assert!(is_autograd(&err(loss.backward(), "loss computed under no_grad")));
}

#[test]
fn backward_through_a_freed_graph() {
    let x = t(&[2]).requires_grad();
    let loss = x.exp().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let e = err(loss.backward(), "second backward");
    assert!(is_autograd(&e), "{e:?}");
    mentions(&e, &["backward", "freed"]);
}

#[test]
fn backward_with_a_gradient_of_the_wrong_shape() {
    let x = t(&[2, 3]).requires_grad();
    let y = x.exp().unwrap();
    let e = err(y.backward_with(&t(&[3, 2])), "backward_with [3, 2]");
    assert!(is_shape(&e, "backward_with"), "{e:?}");
    mentions(&e, &["backward_with", "[3, 2]", "[2, 3]"]);
}

// ------------------------------------------------------------------------------------------
// Reading values, creation, assignment
// ------------------------------------------------------------------------------------------

#[test]
fn to_scalar_of_a_non_scalar() {
    let e = err(t(&[2, 1]).to_scalar::<f32>(), "to_scalar");
    assert!(is_shape(&e, "to_scalar"), "{e:?}");
    mentions(&e, &["to_scalar", "[2, 1]"]);
    assert!(t(&[0]).to_scalar::<f32>().is_err());
    assert_eq!(t(&[1, 1]).to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn arange_with_a_bad_step_or_range() {
    for (start, end, step) in [
        (0.0, 5.0, 0.0),
        (0.0, f64::NAN, 1.0),
        (f64::INFINITY, 5.0, 1.0),
        (0.0, 5.0, f64::NAN),
    ] {
        let e = err(Tensor::arange(start, end, step, DType::F32, &DEV), "arange");
        assert!(is_invalid(&e, "arange"), "{e:?}");
        mentions(&e, &["arange", &format!("step {step}")]);
    }
    // A range too long to allocate is refused, not a capacity-overflow panic.
    let e = err(
        Tensor::arange(0.0, 1e30, 1.0, DType::F32, &DEV),
        "arange of 1e30 elements",
    );
    assert!(is_invalid(&e, "arange"), "{e:?}");
    mentions(&e, &["arange", "elements"]);
    // An empty range is not an error.
    assert_eq!(Tensor::arange(5.0, 0.0, 1.0, DType::F32, &DEV).unwrap().shape(), &[0]);
}

#[test]
fn mean_over_an_empty_dim() {
    let x = t(&[2, 0]);
    let e = err(x.mean(&[1], false), "mean over size 0");
    assert!(is_shape(&e, "mean"), "{e:?}");
    mentions(&e, &["mean", "[2, 0]", "no elements"]);
    assert!(err(x.mean_all(), "mean_all of an empty tensor")
        .to_string()
        .contains("mean"));
    // Over the non-empty dim the result is simply empty.
    assert_eq!(x.mean(&[0], false).unwrap().shape(), &[0]);
}

#[test]
fn max_and_min_over_an_empty_dim() {
    let x = t(&[0, 3]);
    for (name, r) in [("max", x.max(&[0], true)), ("min", x.min(&[-2], false))] {
        let e = err(r, name);
        assert!(is_shape(&e, name), "{e:?}");
        mentions(&e, &[name, "empty", "[0, 3]"]);
    }
    assert!(err(x.max_all(), "max_all").to_string().contains("max"));
    assert_eq!(x.max(&[1], false).unwrap().shape(), &[0]);
    // The sum over an empty dim is zero, not an error.
    assert_eq!(x.sum(&[0], false).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 3]);
}

#[test]
fn assign_with_a_mismatched_source() {
    let x = t(&[2, 3]);
    let e = err(x.assign(&t(&[3, 2])), "assign shape");
    assert!(is_shape(&e, "assign"), "{e:?}");
    mentions(&e, &["assign", "[2, 3]", "[3, 2]"]);
    let e = err(x.assign(&t64(&[2, 3])), "assign dtype");
    mentions(&e, &["assign", "f32", "f64"]);
}

// ------------------------------------------------------------------------------------------
// Random shapes never panic, and succeed exactly when valid
// ------------------------------------------------------------------------------------------

/// NumPy broadcasting, written independently of kiln.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let pad = |s: &[usize]| [vec![1; n - s.len()], s.to_vec()].concat();
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Some(x),
            (1, _) => Some(y),
            (_, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// The element count of a shape; None when its non-zero dims multiply past usize::MAX
/// (kiln refuses such shapes even when another dim is 0, so that no partial product of an
/// accepted shape can overflow).
fn count(shape: &[usize]) -> Option<usize> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

fn resolve(dim: isize, rank: usize) -> Option<usize> {
    let d = if dim < 0 { dim.checked_add(rank as isize)? } else { dim };
    (0..rank as isize).contains(&d).then_some(d as usize)
}

fn small_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..5)
}

/// Mostly small dims, sometimes sizes whose product overflows.
fn any_dim() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..7, 1 => Just(1usize << 33), 1 => Just(1usize << 63), 1 => Just(usize::MAX)]
}

fn any_isize() -> impl Strategy<Value = isize> {
    prop_oneof![8 => -6isize..6, 1 => Just(isize::MIN), 1 => Just(isize::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_never_panic(
        a in small_shape(),
        b in small_shape(),
        target in prop::collection::vec(any_dim(), 0..5),
        d0 in any_isize(),
        d1 in any_isize(),
        start in any_dim(),
        len in any_dim(),
    ) {
        let (x, y) = (t(&a), t(&b));

        // add: Ok exactly when the shapes broadcast, with the broadcast shape.
        match (x.add(&y), broadcast(&a, &b)) {
            (Ok(z), Some(s)) => prop_assert_eq!(z.shape(), s.as_slice()),
            (Err(e), None) => prop_assert!(matches!(e, Error::Shape { op: "add", .. }), "{:?}", e),
            (r, s) => prop_assert!(false, "add {:?} {:?}: {:?} but expected {:?}", a, b, r.map(|z| z.shape().to_vec()), s),
        }

        // matmul: rank ≥ 2, equal inner dims, broadcastable batch dims.
        let valid = if a.len() >= 2 && b.len() >= 2 && a[a.len() - 1] == b[b.len() - 2] {
            broadcast(&a[..a.len() - 2], &b[..b.len() - 2])
                .map(|batch| [batch, vec![a[a.len() - 2], b[b.len() - 1]]].concat())
        } else {
            None
        };
        match (x.matmul(&y), valid) {
            (Ok(z), Some(s)) => prop_assert_eq!(z.shape(), s.as_slice()),
            (Err(e), None) => prop_assert!(matches!(e, Error::Shape { op: "matmul", .. }), "{:?}", e),
            (r, s) => prop_assert!(false, "matmul {:?} {:?}: {:?} but expected {:?}", a, b, r.map(|z| z.shape().to_vec()), s),
        }
        // The same with the rhs transposed (a strided operand).
        if b.len() >= 2 {
            let _ = x.matmul(&y.transpose(-1, -2).unwrap());
        }

        // reshape: Ok exactly when the element counts agree (counted without overflow).
        match (x.reshape(&target), count(&target) == Some(x.numel())) {
            (Ok(z), true) => prop_assert_eq!(z.shape(), target.as_slice()),
            (Err(e), false) => prop_assert!(matches!(e, Error::Shape { op: "reshape", .. }), "{:?}", e),
            (r, ok) => prop_assert!(false, "reshape {:?} -> {:?}: {:?}, expected ok = {}", a, target, r.map(|z| z.shape().to_vec()), ok),
        }

        // narrow: a valid dim and start + len within it.
        let valid = resolve(d0, a.len()).filter(|&d| start.checked_add(len).is_some_and(|end| end <= a[d]));
        match (x.narrow(d0, start, len), valid) {
            (Ok(z), Some(d)) => {
                prop_assert_eq!(z.shape()[d], len);
                prop_assert_eq!(z.to_vec::<f32>().unwrap().len(), z.numel());
            }
            (Err(_), None) => {}
            (r, v) => prop_assert!(false, "narrow {:?} dim {} {}..+{}: {:?}, expected dim {:?}", a, d0, start, len, r.map(|z| z.shape().to_vec()), v),
        }

        // transpose: both dims valid.
        match (x.transpose(d0, d1), resolve(d0, a.len()).zip(resolve(d1, a.len()))) {
            (Ok(z), Some((i, j))) => {
                let mut s = a.clone();
                s.swap(i, j);
                prop_assert_eq!(z.shape(), s.as_slice());
                prop_assert_eq!(z.contiguous().unwrap().to_vec::<f32>().unwrap().len(), z.numel());
            }
            (Err(e), None) => prop_assert!(matches!(e, Error::Dim { op: "transpose", .. }), "{:?}", e),
            (r, v) => prop_assert!(false, "transpose {:?} {} {}: {:?}, expected {:?}", a, d0, d1, r.map(|z| z.shape().to_vec()), v),
        }

        // broadcast_to a random target: Ok exactly when NumPy would allow it.
        let fits = target.len() >= a.len()
            && broadcast(&a, &target).as_deref() == Some(target.as_slice())
            && count(&target).is_some();
        match x.broadcast_to(&target) {
            Ok(z) => prop_assert!(fits && z.shape() == target.as_slice(), "broadcast_to {:?} -> {:?} succeeded", a, target),
            Err(e) => prop_assert!(!fits && matches!(e, Error::Shape { .. }), "broadcast_to {:?} -> {:?}: {:?}", a, target, e),
        }

        // A few more ops on random dims: any result, no panic.
        let _ = x.softmax(d0);
        let _ = x.sum(&[d0, d1], d0 > 0);
        let _ = x.max(&[d0], true);
        let _ = x.unsqueeze(d0);
        let _ = x.squeeze(d1);
        let _ = Tensor::cat(&[x.clone(), y.clone()], d0);
        let _ = x.index_select(d0, &ids(&[0, 1]));
        let _ = x.layer_norm(&y, &y, 1e-5);
    }
}

// ------------------------------------------------------------------------------------------
// Everyday ops
// ------------------------------------------------------------------------------------------

#[test]
fn clamp_and_arg_extremum_bad_inputs() {
    for (min, max) in [(1.0, -1.0), (f64::NAN, 1.0), (0.0, f64::NAN)] {
        let e = err(t(&[3]).clamp(min, max), "bad bounds");
        assert!(is_invalid(&e, "clamp"), "{e:?}");
        mentions(&e, &["clamp", "min", &format!("{min}"), &format!("{max}")]);
    }
    let e = err(t(&[2, 0]).argmax(1, false), "empty dim");
    assert!(is_shape(&e, "argmax"), "{e:?}");
    mentions(&e, &["argmax", "[2, 0]", "empty"]);
    let e = err(ids(&[1, 2]).argmin(0, false), "u32");
    assert!(is_dtype(&e, "argmin"), "{e:?}");
    assert!(matches!(
        t(&[2, 3]).argmax(2, false),
        Err(Error::Dim { op: "argmax", .. })
    ));
}

#[test]
fn gather_and_scatter_add_bad_indices() {
    let x = t(&[2, 3]);
    let idx = |v: &[u32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &DEV).unwrap();
    let e = err(x.gather(1, &idx(&[0, 3], &[1, 2])), "index out of range");
    assert!(is_index(&e, "gather"), "{e:?}");
    mentions(&e, &["gather", "index 3", "[0, 1]", "dimension 1 of size 3"]);
    let e = err(x.gather(1, &idx(&[0, 1, 2], &[3])), "rank");
    assert!(is_shape(&e, "gather"), "{e:?}");
    mentions(&e, &["gather", "[3]", "[2, 3]", "rank"]);
    let e = err(x.gather(1, &idx(&[0; 3], &[3, 1])), "larger outside dim");
    assert!(is_shape(&e, "gather"), "{e:?}");
    let e = err(x.gather(0, &t(&[1, 3])), "float index");
    assert!(is_dtype(&e, "gather"), "{e:?}");
    mentions(&e, &["gather", "u32", "f32"]);
    let e = err(x.scatter_add(0, &idx(&[0, 1], &[1, 2]), &t(&[1, 3])), "src shape");
    assert!(is_shape(&e, "scatter_add"), "{e:?}");
    mentions(&e, &["scatter_add", "src", "[1, 3]", "[1, 2]"]);
    let e = err(x.scatter_add(0, &idx(&[0, 1], &[1, 2]), &t64(&[1, 2])), "src dtype");
    assert!(is_dtype(&e, "scatter_add"), "{e:?}");
    let e = err(
        x.scatter_add(0, &idx(&[2, 0], &[1, 2]), &t(&[1, 2])),
        "index out of range",
    );
    assert!(is_index(&e, "scatter_add"), "{e:?}");
}

#[test]
fn var_stack_split_and_reshape_infer_bad_inputs() {
    let e = err(t(&[3, 1]).var(&[1], 1, false), "one element, unbiased");
    assert!(is_shape(&e, "var"), "{e:?}");
    mentions(&e, &["var", "[3, 1]", "correction 1"]);
    let e = err(t(&[3, 2]).std(&[0, 1], 6, false), "correction too large");
    assert!(is_shape(&e, "std"), "{e:?}");
    let e = err(Tensor::stack(&[t(&[2, 3]), t(&[3, 2])], 0), "shapes differ");
    assert!(is_shape(&e, "stack"), "{e:?}");
    mentions(&e, &["stack", "[2, 3]", "[3, 2]"]);
    let e = err(Tensor::stack(&[], 0), "nothing to stack");
    assert!(is_invalid(&e, "stack"), "{e:?}");
    assert!(matches!(
        Tensor::stack(&[t(&[2])], 2),
        Err(Error::Dim { op: "stack", .. })
    ));
    let e = err(t(&[4]).chunk(0, 0), "zero chunks");
    assert!(is_invalid(&e, "chunk"), "{e:?}");
    let e = err(t(&[4]).split(0, 0), "zero-size pieces");
    assert!(is_invalid(&e, "split"), "{e:?}");
    let e = err(t(&[4]).split_sizes(&[1, 2], 0), "sizes do not add up");
    assert!(is_shape(&e, "split"), "{e:?}");
    mentions(&e, &["split", "[1, 2]", "4"]);
    let e = err(t(&[2, 6]).reshape_infer(&[-1, -1]), "two -1");
    assert!(is_shape(&e, "reshape_infer"), "{e:?}");
    mentions(&e, &["reshape_infer", "more than one -1"]);
    let e = err(t(&[2, 6]).reshape_infer(&[5, -1]), "not divisible");
    mentions(&e, &["reshape_infer", "[5, -1]", "12 elements"]);
    let e = err(t(&[2, 6]).reshape_infer(&[-2, 6]), "negative size");
    mentions(&e, &["reshape_infer", "-2"]);
    let e = err(t(&[2, 6]).reshape_infer(&[3, 5]), "wrong count");
    assert!(is_shape(&e, "reshape"), "{e:?}");
}

#[test]
fn item_and_loss_bad_inputs() {
    let e = err(t(&[2]).item(), "two elements");
    assert!(is_shape(&e, "item"), "{e:?}");
    mentions(&e, &["item", "one element", "[2]"]);
    assert_eq!(t(&[1, 1]).affine(1.0, 2.5).unwrap().item().unwrap(), 2.5);
    let e = err(t(&[2, 3]).mse_loss(&t(&[3, 2])), "shapes differ");
    assert!(is_shape(&e, "mse_loss"), "{e:?}");
    mentions(&e, &["mse_loss", "[2, 3]", "[3, 2]"]);
    let e = err(t(&[2, 3]).nll_loss(&ids(&[0, 1, 2])), "targets length");
    assert!(is_shape(&e, "nll_loss"), "{e:?}");
    mentions(&e, &["nll_loss", "[2]", "[3]"]);
    let e = err(t(&[2, 3]).nll_loss(&ids(&[0, 3])), "target out of range");
    assert!(is_index(&e, "nll_loss"), "{e:?}");
    mentions(&e, &["nll_loss", "index 3"]);
    let e = err(t(&[6]).nll_loss(&ids(&[0])), "rank 1");
    assert!(is_shape(&e, "nll_loss"), "{e:?}");
    let e = err(&t(&[2, 3]) + &t(&[2]), "operator shapes");
    assert!(is_shape(&e, "add"), "{e:?}");
}
