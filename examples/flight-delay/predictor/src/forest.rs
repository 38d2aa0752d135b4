//! The trees of a [`Booster`](crate::gbdt::Booster), flattened so that a row
//! is scored without a mispredicted branch, with the same result as
//! LightGBM's `Tree::Predict`, bit for bit.
//!
//! Every split, numerical or categorical, becomes one test: "is bit `code` of
//! my mask set?", where `code` is a small integer that depends only on the
//! row's value of the split's feature, worked out once per row:
//!
//! - A **numerical** feature's codes are its value intervals between the
//!   distinct thresholds the model splits it at (`code` = how many of them are
//!   below the value), plus one code for NaN and one for "near zero" (within
//!   LightGBM's `kZeroThreshold` of 0) when a split treats zero as missing. A
//!   split at the `j`-th threshold sends codes `0..=j` left; its NaN and
//!   near-zero bits hold where its missing-value rule sends those.
//! - A **categorical** feature's codes are the categories its bitsets cover,
//!   plus one code "other" for NaN, negative and larger categories, which
//!   every split sends right, as LightGBM does.
//!
//! Leaves are steps that lead to themselves, and the trees are cut into
//! groups of [`LANES`] consecutive trees. A row walks the trees of a group side
//! by side, one level of each per round, for as many rounds as the group's
//! deepest tree needs; the walks are independent, so the processor overlaps
//! their loads. The leaves are then added in tree order, from 0, in `f64`, so
//! the sum is LightGBM's. The tests check the walk against a plain
//! transcription of LightGBM's rules.

use crate::gbdt::{
    CATEGORICAL, DEFAULT_LEFT, MISSING_NAN, MISSING_ZERO, ModelError, Node, Tree, ZERO_THRESHOLD,
    model_error,
};

/// How many trees a row walks side by side.
const LANES: usize = 8;

/// Rows with at most this many features keep their codes on the stack.
const STACK_FEATURES: usize = 64;

/// The most mask words a model may need (256 MiB): a split's mask has a bit
/// per code of its feature, so a feature split at very many thresholds, or
/// with very wide category bitsets, multiplies its splits by its codes.
const MAX_MASK_WORDS: usize = 32 << 20;

/// One node of the flattened forest.
#[derive(Debug, Clone, Copy)]
struct Step {
    feature: u32,
    /// The mask's first word in `Forest::masks`; it has the feature's
    /// `words` words.
    mask: u32,
    /// The next step when the bit is set, and when it is not. A leaf leads
    /// to itself.
    left: u32,
    right: u32,
}

/// [`LANES`] consecutive trees, walked together.
#[derive(Debug, Clone)]
struct Group {
    /// The trees' root steps; lanes past `trees` wait at the empty leaf.
    roots: [u32; LANES],
    trees: usize,
    /// The most splits on a path from a root of the group to a leaf.
    depth: u32,
}

/// How a feature's values become codes.
#[derive(Debug, Clone, Default)]
enum Coding {
    /// No split reads the feature.
    #[default]
    Unused,
    Numerical {
        /// The distinct thresholds, ascending.
        thresholds: Vec<f64>,
        /// Whether some split treats values near zero as missing.
        zero_missing: bool,
    },
    Categorical {
        /// Categories `0..categories` have codes of their own.
        categories: u32,
    },
}

impl Coding {
    /// How many codes the feature has.
    fn codes(&self) -> u32 {
        match self {
            Coding::Unused => 1,
            // Value intervals, NaN, near zero.
            // (Saturating: a model that large is refused by the mask bound.)
            Coding::Numerical { thresholds, .. } => {
                u32::try_from(thresholds.len()).map_or(u32::MAX, |t| t.saturating_add(3))
            }
            // Categories, other.
            Coding::Categorical { categories } => categories.saturating_add(1),
        }
    }

    fn code(&self, value: f64) -> u32 {
        match self {
            Coding::Unused => 0,
            Coding::Numerical {
                thresholds,
                zero_missing,
            } => {
                let intervals = thresholds.len() as u32 + 1;
                if value.is_nan() {
                    intervals
                } else if *zero_missing && value.abs() <= ZERO_THRESHOLD {
                    intervals + 1
                } else {
                    thresholds.partition_point(|&t| t < value) as u32
                }
            }
            Coding::Categorical { categories } => {
                if value.is_nan() {
                    return *categories;
                }
                // C++ `static_cast<int>`: truncation toward zero.
                match u32::try_from(value as i32) {
                    Ok(category) if category < *categories => category,
                    _ => *categories,
                }
            }
        }
    }
}

/// The trees, flattened for evaluation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forest {
    /// The splits, then the leaves.
    steps: Vec<Step>,
    /// The first leaf: an empty one.
    first_leaf: u32,
    /// The leaf values, from `first_leaf` on.
    values: Vec<f64>,
    masks: Vec<u64>,
    groups: Vec<Group>,
    codings: Vec<Coding>,
}

impl Forest {
    /// Flattens `trees`, whose categorical splits index `bitsets`.
    pub(crate) fn new(
        trees: &[Tree],
        bitsets: &[u32],
        num_features: usize,
    ) -> Result<Forest, ModelError> {
        let codings = codings(trees, num_features)?;
        let words = |feature: u32| codings[feature as usize].codes().div_ceil(64);
        let widest = (0..num_features as u32).map(words).max().unwrap_or(1);
        // In u64: on wasm32 a usize sum could wrap below the bound.
        let needed: u64 = trees
            .iter()
            .flat_map(|t| &t.nodes)
            .map(|n| u64::from(words(n.feature)))
            .sum();
        if needed > MAX_MASK_WORDS as u64 {
            return Err(model_error(format!(
                "the model's splits need {} MiB of masks, more than the {} MiB this evaluator allows: a feature is split at too many thresholds or categories",
                needed >> 17,
                MAX_MASK_WORDS >> 17
            )));
        }
        // All splits first, tree after tree, each tree's in LightGBM's order
        // (its root is node 0); then the leaves, starting with an empty one
        // (value 0) where idle lanes wait. Leaves read feature 0 through the
        // all-zero mask at word 0, which is as wide as any feature's.
        let splits: usize = trees.iter().map(|t| t.nodes.len()).sum();
        let leaves: usize = trees.iter().map(|t| t.leaves.len()).sum();
        if splits + 1 + leaves > u32::MAX as usize {
            return Err(model_error(format!(
                "the model has more than {} nodes",
                u32::MAX
            )));
        }
        let mut forest = Forest {
            steps: Vec::with_capacity(splits + 1 + leaves),
            first_leaf: splits as u32,
            values: Vec::with_capacity(1 + leaves),
            masks: Vec::with_capacity(widest as usize + needed as usize),
            groups: Vec::new(),
            codings: Vec::new(),
        };
        forest.masks.resize(widest as usize, 0);
        let mut roots = Vec::with_capacity(trees.len());
        let mut depths = Vec::with_capacity(trees.len());
        let mut leaf_base = splits + 1;
        for (i, tree) in trees.iter().enumerate() {
            let base = forest.steps.len();
            // Node n is step base + n, leaf l is step leaf_base + l.
            let step = |child: i32| {
                if child >= 0 {
                    (base + child as usize) as u32
                } else {
                    (leaf_base + (!child) as usize) as u32
                }
            };
            for node in &tree.nodes {
                let coding = &codings[node.feature as usize];
                let mask = forest.masks.len();
                forest.masks.resize(mask + words(node.feature) as usize, 0);
                for code in 0..coding.codes() {
                    if goes_left(node, coding, bitsets, code) {
                        forest.masks[mask + (code / 64) as usize] |= 1 << (code % 64);
                    }
                }
                forest.steps.push(Step {
                    feature: node.feature,
                    mask: mask as u32,
                    left: step(node.left),
                    right: step(node.right),
                });
            }
            roots.push(if tree.nodes.is_empty() {
                step(!0)
            } else {
                base as u32
            });
            depths.push(depth(tree).map_err(|e| model_error(format!("tree {i}: {e}")))?);
            leaf_base += tree.leaves.len();
        }
        for value in std::iter::once(0.0).chain(trees.iter().flat_map(|t| t.leaves.iter().copied()))
        {
            let at = forest.steps.len() as u32;
            forest.steps.push(Step {
                feature: 0,
                mask: 0,
                left: at,
                right: at,
            });
            forest.values.push(value);
        }
        for (roots, depths) in roots.chunks(LANES).zip(depths.chunks(LANES)) {
            let mut group = Group {
                roots: [forest.first_leaf; LANES],
                trees: roots.len(),
                depth: depths.iter().copied().max().unwrap_or(0),
            };
            group.roots[..roots.len()].copy_from_slice(roots);
            forest.groups.push(group);
        }
        forest.codings = codings;
        forest.check_indices()?;
        Ok(forest)
    }

    /// What [`Forest::next`] relies on to read without bounds checks.
    fn check_indices(&self) -> Result<(), ModelError> {
        let steps = self.steps.len() as u64;
        let roots_ok = self
            .groups
            .iter()
            .all(|g| g.trees <= LANES && g.roots.iter().all(|&r| u64::from(r) < steps));
        let steps_ok = self.steps.iter().all(|s| {
            u64::from(s.left) < steps
                && u64::from(s.right) < steps
                && (s.feature as usize) < self.codings.len()
                && u64::from(s.mask)
                    + u64::from(self.codings[s.feature as usize].codes().div_ceil(64))
                    <= self.masks.len() as u64
        });
        let values_ok = self.values.len() as u64 == steps - u64::from(self.first_leaf);
        if roots_ok && steps_ok && values_ok && !self.codings.is_empty() {
            Ok(())
        } else {
            Err(model_error(
                "internal error: the flattened model is inconsistent".into(),
            ))
        }
    }

    /// The sum of the trees' leaf values for `row`, in tree order.
    pub(crate) fn raw_score(&self, row: &[f64]) -> f64 {
        let mut stack = [0u32; STACK_FEATURES];
        let mut heap = Vec::new();
        let codes = if self.codings.len() <= STACK_FEATURES {
            &mut stack[..self.codings.len()]
        } else {
            heap.resize(self.codings.len(), 0);
            &mut heap[..]
        };
        for ((code, coding), &value) in codes.iter_mut().zip(&self.codings).zip(row) {
            *code = coding.code(value);
        }
        let codes = &*codes;
        let mut sum = 0.0;
        for group in &self.groups {
            let mut at = group.roots;
            // Most rows reach every leaf before the deepest path's end.
            for _ in 0..group.depth {
                for lane in &mut at {
                    *lane = self.next(*lane, codes);
                }
                if at.iter().all(|&a| a >= self.first_leaf) {
                    break;
                }
            }
            for &leaf in &at[..group.trees] {
                sum += self.values[(leaf - self.first_leaf) as usize];
            }
        }
        sum
    }

    /// The step after `at` for a row with these codes.
    #[inline(always)]
    fn next(&self, at: u32, codes: &[u32]) -> u32 {
        // SAFETY: `Forest::new` checked, with `check_indices`, that every
        // step's `left` and `right` are steps, its feature one of
        // `codings` (whose length `codes` has), and its mask's words in
        // `masks` for every code of its feature; `at` is a root or a
        // `left`/`right`, and `Coding::code` is below `Coding::codes`. The
        // bounds checks cost a tenth of a prediction in Wasm.
        let step = unsafe { self.steps.get_unchecked(at as usize) };
        let code = unsafe { *codes.get_unchecked(step.feature as usize) };
        let word = unsafe { *self.masks.get_unchecked((step.mask + code / 64) as usize) };
        if (word >> (code % 64)) & 1 != 0 {
            step.left
        } else {
            step.right
        }
    }
}

/// Where LightGBM sends a value with this `code` at `node`
/// (`include/LightGBM/tree.h`, `NumericalDecision` and `CategoricalDecision`).
fn goes_left(node: &Node, coding: &Coding, bitsets: &[u32], code: u32) -> bool {
    match coding {
        Coding::Unused => false,
        Coding::Numerical { thresholds, .. } => {
            let missing = (node.decision >> 2) & 3;
            let default_left = node.decision & DEFAULT_LEFT != 0;
            let intervals = thresholds.len() as u32 + 1;
            // Values of this code compare with the threshold as this one does.
            let like = |value: f64| value <= node.threshold;
            if code == intervals {
                // NaN: read as 0 unless the missing type is NaN; a missing
                // value goes to the default side.
                match missing {
                    MISSING_NAN | MISSING_ZERO => default_left,
                    _ => like(0.0),
                }
            } else if code == intervals + 1 {
                // Near zero (only coded when some split has missing type zero).
                match missing {
                    MISSING_ZERO => default_left,
                    _ => like(0.0),
                }
            } else {
                // Interval `code`: above threshold `code - 1`, at or below
                // threshold `code`. The node's threshold is one of them.
                let j = thresholds.partition_point(|&t| t < node.threshold) as u32;
                code <= j
            }
        }
        Coding::Categorical { categories } => {
            if code >= *categories {
                return false;
            }
            let word = code / 32;
            word < node.bits_len
                && (bitsets[(node.bits_start + word) as usize] >> (code % 32)) & 1 == 1
        }
    }
}

/// How each feature is coded, from the splits that read it.
fn codings(trees: &[Tree], num_features: usize) -> Result<Vec<Coding>, ModelError> {
    let mut codings = vec![Coding::Unused; num_features];
    for (i, tree) in trees.iter().enumerate() {
        for (n, node) in tree.nodes.iter().enumerate() {
            let refuse = |what: &str| {
                Err(model_error(format!(
                    "tree {i}: node {n}: feature {} {what}",
                    node.feature
                )))
            };
            let coding = &mut codings[node.feature as usize];
            if node.decision & CATEGORICAL != 0 {
                match coding {
                    Coding::Numerical { .. } => {
                        return refuse("is split both as a number and as a category");
                    }
                    Coding::Unused => *coding = Coding::Categorical { categories: 0 },
                    Coding::Categorical { .. } => {}
                }
                if let Coding::Categorical { categories } = coding {
                    *categories = (*categories).max(node.bits_len.saturating_mul(32));
                }
            } else {
                if node.threshold.is_nan() {
                    return refuse("is split at a NaN threshold");
                }
                match coding {
                    Coding::Categorical { .. } => {
                        return refuse("is split both as a number and as a category");
                    }
                    Coding::Unused => {
                        *coding = Coding::Numerical {
                            thresholds: Vec::new(),
                            zero_missing: false,
                        }
                    }
                    Coding::Numerical { .. } => {}
                }
                if let Coding::Numerical {
                    thresholds,
                    zero_missing,
                } = coding
                {
                    thresholds.push(node.threshold);
                    *zero_missing |= (node.decision >> 2) & 3 == MISSING_ZERO;
                }
            }
        }
    }
    for (feature, coding) in codings.iter_mut().enumerate() {
        if let Coding::Numerical {
            thresholds,
            zero_missing,
        } = coding
        {
            thresholds.sort_by(f64::total_cmp);
            thresholds.dedup();
            // Values near zero share one code, so every split must send them
            // all one way: no threshold may fall inside that band.
            if *zero_missing
                && thresholds
                    .iter()
                    .any(|t| (-ZERO_THRESHOLD..ZERO_THRESHOLD).contains(t))
            {
                return Err(model_error(format!(
                    "feature {feature} treats zero as missing and is also split within {ZERO_THRESHOLD:e} of zero"
                )));
            }
        }
    }
    Ok(codings)
}

/// The most splits on a path from the root of `tree` to a leaf, or an error
/// if the splits do not form a tree (a node reached twice, so a cycle).
fn depth(tree: &Tree) -> Result<u32, String> {
    let mut deepest = 0;
    let mut seen = vec![false; tree.nodes.len()];
    let mut stack = Vec::new();
    if !tree.nodes.is_empty() {
        stack.push((0usize, 1u32));
    }
    while let Some((node, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[node], true) {
            return Err(format!(
                "node {node} is reached twice: the splits do not form a tree"
            ));
        }
        deepest = deepest.max(depth);
        let node = &tree.nodes[node];
        for child in [node.left, node.right] {
            if child >= 0 {
                stack.push((child as usize, depth + 1));
            }
        }
    }
    Ok(deepest)
}
