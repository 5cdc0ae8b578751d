//! Differentiable operations, one file per family: the forward dispatch to a backend and the
//! backward rule sit side by side.

pub mod argmax;
pub mod attention;
pub mod binary;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gather;
pub mod layer_norm;
pub mod linear_quantized;
pub mod loss;
pub mod matmul;
pub mod overload;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod shape;
pub mod softmax;
pub mod stack;
pub mod swiglu;
pub mod unary;
pub mod var;
pub mod where_cond;
