//! Reverse-mode automatic differentiation, define-by-run.
//!
//! Every op that has an input requiring a gradient records a `Node` on its output: the
//! inputs and a closure that maps the output's gradient to the inputs' gradients. The
//! tensors themselves are the graph. `loss.backward()` sorts the nodes reachable from the
//! loss in topological order, walks them from the loss back to the leaves, sums the
//! gradients flowing into each tensor, and returns the gradients of the leaves that asked
//! for one. Each node is consumed as it is walked, so the graph's memory is freed by the
//! time `backward` returns (a second `backward` through the same graph is an error, as in
//! PyTorch). `backward_observed` is the same sweep, telling a [`BackwardObserver`] each leaf's
//! gradient as soon as it is final (the leaf's last use has been walked). See docs/autograd.md.

use crate::{Error, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Maps the output's gradient to one optional gradient per input (None: no gradient flows
/// there, e.g. into integer indices). `inputs` are the node's inputs, `output` the tensor that
/// owns the node: passing them here instead of capturing them avoids reference cycles.
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor, &[Tensor], &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// One recorded operation.
pub(crate) struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

/// A backward rule that does nothing: what a node holds once its own rule was taken out to run,
/// or handed to [`Node`]'s drop (a zero-sized closure, so boxing it allocates nothing).
fn spent_backward() -> BackwardFn {
    Box::new(|_, _, _| Ok(Vec::new()))
}

impl Node {
    /// Takes the backward rule out to call it (a node with a `Drop` cannot be destructured).
    pub(crate) fn take_backward(&mut self) -> BackwardFn {
        std::mem::replace(&mut self.backward, spent_backward())
    }
}

/// What a dropped node still owns: its inputs, and its backward rule with the tensors it captured.
type NodeParts = (Vec<Tensor>, BackwardFn);

thread_local! {
    /// The parts of nodes waiting to be dropped on this thread, while an outer [`Node`] drop
    /// empties it; `None` when no drop is running.
    static DROP_QUEUE: RefCell<Option<Vec<NodeParts>>> = const { RefCell::new(None) };
}

/// Dropping a graph node by node, without recursion. Left to the compiler, dropping the last
/// tensor of an n-op chain drops its node, whose input's last reference drops that input's node,
/// and so on: n nested drops, which overflow a 2 MiB thread stack near 30k ops (a graph built and
/// dropped without `backward`, e.g. an evaluation loop that forgot `no_grad`). Here the outermost
/// node drop on a thread becomes a loop: a node dropped inside it only queues its parts, and the
/// loop drops queued parts one at a time, so the stack depth stays constant however long the graph.
impl Drop for Node {
    fn drop(&mut self) {
        let parts = (std::mem::take(&mut self.inputs), self.take_backward());
        let mut queued = Some(parts);
        // `try_with`: during thread teardown the queue may already be gone; then drop in place.
        let draining_elsewhere = DROP_QUEUE
            .try_with(|q| match q.borrow_mut().as_mut() {
                Some(queue) => {
                    queue.extend(queued.take());
                    true
                }
                None => false,
            })
            .unwrap_or(true);
        if draining_elsewhere {
            return; // queued for the running loop, or (teardown) dropped at the end of this scope
        }
        let _ = DROP_QUEUE.try_with(|q| *q.borrow_mut() = Some(Vec::from_iter(queued.take())));
        loop {
            // The borrow ends before the parts are dropped, since dropping them queues more.
            let next = DROP_QUEUE.with(|q| q.borrow_mut().as_mut().and_then(Vec::pop));
            match next {
                Some(parts) => drop(parts),
                None => break,
            }
        }
        DROP_QUEUE.with(|q| *q.borrow_mut() = None);
    }
}

/// How a tensor takes part in differentiation.
pub(crate) enum GradState {
    /// Constant: no gradient flows into or through it.
    None,
    /// A leaf the user marked with `requires_grad()`: its gradient is returned.
    Leaf,
    /// The output of a recorded op; `None` once backward has consumed the node.
    Op(std::sync::Mutex<Option<Node>>),
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph now.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Disables graph recording on this thread until the guard is dropped (inference, optimizer
/// updates). Guards nest: dropping one restores the state it found.
#[must_use = "recording resumes as soon as the guard is dropped"]
pub struct NoGradGuard {
    previous: bool,
}

/// Starts a no-grad scope: `let _guard = kiln::no_grad();`.
pub fn no_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { previous }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Turns graph recording on until the guard is dropped (inside a backward rule that must
/// differentiate again, see [`record_recomputed`]).
fn enable_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(true));
    NoGradGuard { previous }
}

/// Gradient checkpointing: `y`, computed from `x` and `params` without a graph, becomes the
/// output of one node whose backward calls `recompute(x)` with recording on, backpropagates the
/// incoming gradient through that fresh graph, and hands on the gradients of `x` and `params`.
/// Between forward and backward only `x` is kept, not the activations inside `recompute`.
/// `recompute` must compute what gave `y` (the same ops on the same tensors); `params` are the
/// tensors it reads that take a gradient.
pub(crate) fn record_recomputed(
    y: Tensor,
    x: &Tensor,
    params: &[Tensor],
    recompute: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Tensor {
    let inputs: Vec<&Tensor> = std::iter::once(x).chain(params).collect();
    y.record("recompute", &inputs, move |grad, inputs, _| {
        let _recording = enable_grad();
        let x = match inputs[0].tracks_grad() {
            true => inputs[0].detach().requires_grad(),
            false => inputs[0].detach(),
        };
        let y = recompute(&x)?;
        if !y.tracks_grad() {
            return Ok(vec![None; inputs.len()]); // nothing it reads takes a gradient
        }
        let grads = backward(&y, grad.clone())?;
        let mut out = vec![grads.get(&x).cloned()];
        out.extend(inputs[1..].iter().map(|p| grads.get(p).cloned()));
        Ok(out)
    })
}

/// Gradients of the leaves, keyed by tensor.
#[derive(Default)]
pub struct Gradients {
    grads: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if `t` is a leaf that requires a gradient and the loss depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.grads.remove(&t.id())
    }

    /// Sets (or replaces) the gradient of `t`, e.g. after clipping or accumulating.
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) -> Option<Tensor> {
        self.grads.insert(t.id(), grad)
    }

    /// Every gradient with the [`Tensor::id`] of its leaf, in no particular order (look one up by
    /// its tensor with [`Gradients::get`]).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.grads.iter().map(|(&id, g)| (id, g))
    }

    /// The number of tensors that have a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no tensor has a gradient (e.g. a loss that required none).
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

/// What a backward pass reports while it runs ([`Tensor::backward_observed`]): each leaf's
/// gradient as soon as it is complete, and the end of each node, so that a caller can start
/// work on finished gradients (e.g. their all-reduce across data-parallel ranks) while the rest
/// of the backward runs. A closure `|leaf, grad| -> Result<()>` is an observer of the first kind.
///
/// [`Tensor::backward_observed`]: crate::Tensor::backward_observed
pub trait BackwardObserver {
    /// `leaf`'s gradient is final: no node left in the graph adds to it. Called once per leaf
    /// that receives a gradient, in the order the gradients complete; an error stops the backward.
    fn gradient_ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()>;

    /// One node's backward rule has run (and the gradients it completed were reported).
    fn node_done(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&Tensor, &Tensor) -> Result<()>> BackwardObserver for F {
    fn gradient_ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
        self(leaf, grad)
    }
}

/// The observer of a plain `backward()`: hears nothing.
struct Unobserved;

impl BackwardObserver for Unobserved {
    fn gradient_ready(&mut self, _: &Tensor, _: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// Nodes reachable from `root`, inputs before outputs, and for each tensor the number of graph
/// edges into nodes (how many times it is some node's input). Iterative, so deep graphs
/// (hundreds of layers, long loops) cannot overflow the stack.
fn topological_order(root: &Tensor) -> (Vec<Tensor>, HashMap<usize, usize>) {
    let mut order = Vec::new();
    let mut uses: HashMap<usize, usize> = HashMap::new();
    let mut visited = std::collections::HashSet::new();
    // (tensor, children pushed yet?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        let inputs = t.node_inputs();
        stack.push((t, true));
        for input in inputs.into_iter().filter(Tensor::tracks_grad) {
            *uses.entry(input.id()).or_default() += 1;
            if !visited.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    (order, uses)
}

/// The state of one backward sweep: gradients flowing towards the leaves, the uses of each
/// tensor not walked yet, and the leaves' final gradients.
struct Sweep<'o> {
    pending: HashMap<usize, Tensor>,
    uses_left: HashMap<usize, usize>,
    result: Gradients,
    observer: &'o mut dyn BackwardObserver,
}

impl Sweep<'_> {
    /// A leaf's gradient is final: report it and keep it.
    fn finish_leaf(&mut self, leaf: &Tensor, grad: Tensor) -> Result<()> {
        self.observer.gradient_ready(leaf, &grad)?;
        self.result.grads.insert(leaf.id(), grad);
        Ok(())
    }

    /// A node with these `inputs` has been walked (run, or passed over without a gradient):
    /// each input has one use fewer, and a leaf left with none has its final gradient.
    fn walked(&mut self, inputs: &[Tensor]) -> Result<()> {
        for input in inputs.iter().filter(|i| i.tracks_grad()) {
            let left = self.uses_left.get_mut(&input.id()).map_or(0, |n| {
                *n -= 1;
                *n
            });
            if left == 0 && input.is_leaf_requiring_grad() {
                if let Some(grad) = self.pending.remove(&input.id()) {
                    self.finish_leaf(input, grad)?;
                }
            }
        }
        Ok(())
    }
}

/// Backpropagates `seed` (the gradient of some scalar with respect to `root`) through the graph.
pub(crate) fn backward(root: &Tensor, seed: Tensor) -> Result<Gradients> {
    backward_observed(root, seed, &mut Unobserved)
}

/// [`backward`], reporting each leaf's gradient to `observer` once no remaining node can add to
/// it (the leaf's last use in the graph has been walked), and the end of every node.
pub(crate) fn backward_observed(root: &Tensor, seed: Tensor, observer: &mut dyn BackwardObserver) -> Result<Gradients> {
    if !root.tracks_grad() {
        return Err(Error::Autograd(
            "the tensor does not depend on any tensor that requires a gradient (call requires_grad() on a leaf, outside no_grad)".into(),
        ));
    }
    let _no_grad = no_grad(); // backward rules compute plain values; they are not differentiated again
    let (order, uses_left) = topological_order(root);
    let mut sweep = Sweep {
        pending: HashMap::from([(root.id(), seed)]),
        uses_left,
        result: Gradients::default(),
        observer,
    };
    for t in order.iter().rev() {
        let Some(grad) = sweep.pending.remove(&t.id()) else {
            sweep.walked(&t.node_inputs())?; // nothing flowed here (e.g. only through an index input)
            continue;
        };
        let Some(mut node) = t.take_node()? else {
            sweep.finish_leaf(t, grad)?; // a leaf that no node uses: the root itself
            continue;
        };
        let input_grads = (node.take_backward())(&grad, &node.inputs, t)?;
        debug_assert_eq!(input_grads.len(), node.inputs.len(), "backward of {}", node.op);
        for (input, g) in node.inputs.iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !input.tracks_grad() {
                continue;
            }
            if g.shape() != input.shape() {
                return Err(Error::Autograd(format!(
                    "internal: {} produced a gradient of shape {:?} for an input of shape {:?}",
                    node.op,
                    g.shape(),
                    input.shape()
                )));
            }
            let g = match sweep.pending.remove(&input.id()) {
                Some(acc) => acc.add(&g)?,
                None => g,
            };
            sweep.pending.insert(input.id(), g);
        }
        sweep.walked(&node.inputs)?;
        sweep.observer.node_done()?;
    }
    Ok(sweep.result)
}
