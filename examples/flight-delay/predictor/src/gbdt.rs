//! Evaluates a LightGBM model from its text format (`Booster.model_to_string()`
//! / `save_model`), the way LightGBM's own `Tree::Predict` does, so that raw
//! scores are bit-for-bit LightGBM's.
//!
//! What is supported is what a binary classifier or a regressor with
//! numerical and categorical splits uses: `num_class=1`, constant leaves (no
//! `is_linear=1`), no `average_output` (random forest mode). Anything else is
//! refused when the model is parsed, naming what was found.
//!
//! The decision rules, from LightGBM 4's `include/LightGBM/tree.h`:
//!
//! - numerical split, `decision_type` bit 1 = default left, bits 2–3 =
//!   missing type (0 none, 1 zero, 2 NaN): a NaN is read as 0 unless the
//!   missing type is NaN; a missing value (zero for "zero", NaN for "NaN")
//!   goes to the default side; otherwise left iff `value <= threshold`.
//! - categorical split (bit 0): NaN or a negative value goes right; otherwise
//!   left iff the category (the value truncated to an integer) is in the
//!   node's bitset.
//!
//! The raw score is the sum of the trees' leaf values, in tree order, in
//! `f64`, starting from 0 (the trees' leaf values already include the
//! learning rate and the initial score). How the trees are walked is in
//! [`crate::forest`]; this module parses them and, for the tests, keeps the
//! rules above transcribed plainly.

use std::fmt;

use crate::forest::Forest;

/// LightGBM's `kZeroThreshold`: a `double` initialised from the float literal `1e-35f`.
pub(crate) const ZERO_THRESHOLD: f64 = 1e-35_f32 as f64;

pub(crate) const CATEGORICAL: u8 = 1;
pub(crate) const DEFAULT_LEFT: u8 = 2;
pub(crate) const MISSING_ZERO: u8 = 1;
pub(crate) const MISSING_NAN: u8 = 2;

/// What is wrong with a model text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(String);

/// Builds a [`ModelError`] (for the artifact reader in the crate root).
pub(crate) fn model_error(message: String) -> ModelError {
    ModelError(message)
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

macro_rules! refuse {
    ($($arg:tt)*) => { return Err(ModelError(format!($($arg)*))) };
}

/// One split node, flattened. Children: `>= 0` another node of the same tree,
/// `< 0` the leaf `!child`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub(crate) threshold: f64,
    pub(crate) feature: u32,
    pub(crate) left: i32,
    pub(crate) right: i32,
    pub(crate) decision: u8,
    /// For categorical splits: the range of the bitset in `Booster::bitsets`.
    pub(crate) bits_start: u32,
    pub(crate) bits_len: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub(crate) nodes: Vec<Node>,
    pub(crate) leaves: Vec<f64>,
}

/// A parsed LightGBM model.
#[derive(Debug, Clone)]
pub struct Booster {
    /// As parsed: what the tests' plain walk reads.
    trees: Vec<Tree>,
    bitsets: Vec<u32>,
    /// The same trees, flattened: what scoring reads.
    forest: Forest,
    num_features: usize,
    sigmoid: Option<f64>,
    objective: String,
    feature_names: Vec<String>,
}

impl Booster {
    /// Parses LightGBM's text model format.
    pub fn parse(text: &str) -> Result<Booster, ModelError> {
        let mut lines = text.lines().map(str::trim_end).peekable();
        match lines.next() {
            Some("tree") => {}
            Some(other) => {
                refuse!("not a LightGBM text model: the first line is {other:?}, not \"tree\"")
            }
            None => refuse!("not a LightGBM text model: it is empty"),
        }
        let mut header = Vec::new();
        while let Some(line) = lines.peek() {
            if line.starts_with("Tree=") {
                break;
            }
            if let Some((k, v)) = line.split_once('=') {
                header.push((k.to_string(), v.to_string()));
            } else if *line == "average_output" {
                refuse!("random-forest models (average_output) are not supported");
            }
            lines.next();
        }
        let get = |key: &str| {
            header
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some(n) = get("num_class")
            && n != "1"
        {
            refuse!("num_class={n}: only single-output models (binary, regression) are supported");
        }
        if let Some(n) = get("num_tree_per_iteration")
            && n != "1"
        {
            refuse!("num_tree_per_iteration={n}: only one tree per iteration is supported");
        }
        let Some(max_feature) = get("max_feature_idx") else {
            refuse!("the model has no max_feature_idx line");
        };
        let num_features = match max_feature.parse::<usize>() {
            Ok(n) => n + 1,
            Err(_) => refuse!("max_feature_idx={max_feature:?} is not a number"),
        };
        let objective = get("objective").unwrap_or("").to_string();
        let sigmoid = if objective.starts_with("binary") {
            let s = objective
                .split_whitespace()
                .find_map(|p| p.strip_prefix("sigmoid:"))
                .unwrap_or("1");
            match s.parse::<f64>() {
                Ok(s) => Some(s),
                Err(_) => refuse!("objective {objective:?}: the sigmoid {s:?} is not a number"),
            }
        } else {
            None
        };
        let feature_names = get("feature_names")
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default();

        let mut booster = Booster {
            trees: Vec::new(),
            bitsets: Vec::new(),
            forest: Forest::default(),
            num_features,
            sigmoid,
            objective,
            feature_names,
        };
        while let Some(line) = lines.next() {
            if line == "end of trees" {
                break;
            }
            let Some(id) = line.strip_prefix("Tree=") else {
                continue;
            };
            let mut fields = Vec::new();
            while let Some(line) = lines.peek() {
                if line.is_empty() || line.starts_with("Tree=") || *line == "end of trees" {
                    break;
                }
                if let Some((k, v)) = line.split_once('=') {
                    fields.push((k, v));
                }
                lines.next();
            }
            let tree = booster
                .parse_tree(&fields)
                .map_err(|e| ModelError(format!("tree {id}: {e}")))?;
            booster.trees.push(tree);
        }
        if booster.trees.is_empty() {
            refuse!("the model has no trees");
        }
        booster.forest = Forest::new(&booster.trees, &booster.bitsets, booster.num_features)?;
        Ok(booster)
    }

    fn parse_tree(&mut self, fields: &[(&str, &str)]) -> Result<Tree, ModelError> {
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if get("is_linear").is_some_and(|v| v != "0") {
            refuse!("linear trees (is_linear=1) are not supported");
        }
        let num_leaves: usize = parse_one(get("num_leaves"), "num_leaves")?;
        let leaves: Vec<f64> = parse_list(get("leaf_value"), "leaf_value")?;
        if leaves.len() != num_leaves {
            refuse!("num_leaves={num_leaves} but {} leaf values", leaves.len());
        }
        if num_leaves == 1 {
            return Ok(Tree {
                nodes: Vec::new(),
                leaves,
            });
        }
        let inner = num_leaves - 1;
        let features: Vec<u32> = parse_list(get("split_feature"), "split_feature")?;
        let thresholds: Vec<f64> = parse_list(get("threshold"), "threshold")?;
        let decisions: Vec<u8> = parse_list(get("decision_type"), "decision_type")?;
        let lefts: Vec<i32> = parse_list(get("left_child"), "left_child")?;
        let rights: Vec<i32> = parse_list(get("right_child"), "right_child")?;
        for (name, len) in [
            ("split_feature", features.len()),
            ("threshold", thresholds.len()),
            ("decision_type", decisions.len()),
            ("left_child", lefts.len()),
            ("right_child", rights.len()),
        ] {
            if len != inner {
                refuse!("num_leaves={num_leaves} needs {inner} {name} values, found {len}");
            }
        }
        let num_cat: usize = parse_one(get("num_cat").or(Some("0")), "num_cat")?;
        let (boundaries, bits): (Vec<u32>, Vec<u32>) = if num_cat > 0 {
            (
                parse_list(get("cat_boundaries"), "cat_boundaries")?,
                parse_list(get("cat_threshold"), "cat_threshold")?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        if num_cat > 0 && boundaries.len() != num_cat + 1 {
            refuse!(
                "num_cat={num_cat} needs {} cat_boundaries, found {}",
                num_cat + 1,
                boundaries.len()
            );
        }
        let base = self.bitsets.len() as u32;
        self.bitsets.extend_from_slice(&bits);

        let mut nodes = Vec::with_capacity(inner);
        for i in 0..inner {
            let child_ok = |c: i32| {
                if c >= 0 {
                    (c as usize) < inner
                } else {
                    ((!c) as usize) < num_leaves
                }
            };
            if !child_ok(lefts[i]) || !child_ok(rights[i]) {
                refuse!("node {i} points at a child that does not exist");
            }
            if features[i] as usize >= self.num_features {
                refuse!(
                    "node {i} splits on feature {} of {}",
                    features[i],
                    self.num_features
                );
            }
            let mut node = Node {
                threshold: thresholds[i],
                feature: features[i],
                left: lefts[i],
                right: rights[i],
                decision: decisions[i],
                bits_start: 0,
                bits_len: 0,
            };
            if decisions[i] & CATEGORICAL != 0 {
                let idx = thresholds[i] as usize;
                if idx + 1 >= boundaries.len()
                    || boundaries[idx] > boundaries[idx + 1]
                    || boundaries[idx + 1] as usize > bits.len()
                {
                    refuse!("categorical node {i} names bitset {idx}, which does not exist");
                }
                node.bits_start = base + boundaries[idx];
                node.bits_len = boundaries[idx + 1] - boundaries[idx];
            }
            nodes.push(node);
        }
        Ok(Tree { nodes, leaves })
    }

    /// How many features a row must have.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The number of trees.
    pub fn num_trees(&self) -> usize {
        self.trees.len()
    }

    /// The feature names the model was trained with, if it recorded them.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The `objective` line, e.g. `binary sigmoid:1`.
    pub fn objective(&self) -> &str {
        &self.objective
    }

    /// The raw score (for a binary model, the log-odds) of one row.
    ///
    /// # Panics
    /// If `row` has fewer than [`Booster::num_features`] values.
    pub fn raw_score(&self, row: &[f64]) -> f64 {
        assert!(
            row.len() >= self.num_features,
            "a row needs {} features",
            self.num_features
        );
        self.forest.raw_score(&row[..self.num_features])
    }

    /// LightGBM's rules transcribed plainly, one tree at a time: what the
    /// tests hold [`Booster::raw_score`] to.
    #[cfg(test)]
    pub(crate) fn plain_raw_score(&self, row: &[f64]) -> f64 {
        let mut sum = 0.0;
        for tree in &self.trees {
            sum += tree.leaves[self.leaf(tree, row)];
        }
        sum
    }

    /// The probability of a binary model: `1 / (1 + exp(-sigmoid * raw))`.
    /// `None` for a model whose objective is not binary.
    pub fn probability(&self, raw: f64) -> Option<f64> {
        self.sigmoid.map(|s| 1.0 / (1.0 + (-s * raw).exp()))
    }

    #[cfg(test)]
    fn leaf(&self, tree: &Tree, row: &[f64]) -> usize {
        if tree.nodes.is_empty() {
            return 0;
        }
        let mut at = 0i32;
        while at >= 0 {
            let node = &tree.nodes[at as usize];
            let value = row[node.feature as usize];
            at = if node.decision & CATEGORICAL != 0 {
                self.categorical(node, value)
            } else {
                numerical(node, value)
            };
        }
        !at as usize
    }

    #[cfg(test)]
    fn categorical(&self, node: &Node, value: f64) -> i32 {
        if value.is_nan() {
            return node.right;
        }
        // C++ `static_cast<int>`: truncation toward zero.
        let category = value as i32;
        if category < 0 {
            return node.right;
        }
        let word = (category / 32) as u32;
        if word >= node.bits_len {
            return node.right;
        }
        let bits = self.bitsets[(node.bits_start + word) as usize];
        if (bits >> (category % 32)) & 1 == 1 {
            node.left
        } else {
            node.right
        }
    }
}

#[cfg(test)]
fn numerical(node: &Node, mut value: f64) -> i32 {
    let missing = (node.decision >> 2) & 3;
    if value.is_nan() && missing != MISSING_NAN {
        value = 0.0;
    }
    let is_missing = match missing {
        MISSING_ZERO => (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&value),
        MISSING_NAN => value.is_nan(),
        _ => false,
    };
    if is_missing {
        return if node.decision & DEFAULT_LEFT != 0 {
            node.left
        } else {
            node.right
        };
    }
    if value <= node.threshold {
        node.left
    } else {
        node.right
    }
}

fn parse_one<T: std::str::FromStr>(text: Option<&str>, name: &str) -> Result<T, ModelError> {
    let Some(text) = text else {
        refuse!("no {name} line");
    };
    text.trim()
        .parse()
        .map_err(|_| ModelError(format!("{name}={text:?} is not a number")))
}

fn parse_list<T: std::str::FromStr>(text: Option<&str>, name: &str) -> Result<Vec<T>, ModelError> {
    let Some(text) = text else {
        refuse!("no {name} line");
    };
    text.split_whitespace()
        .map(|v| {
            v.parse()
                .map_err(|_| ModelError(format!("{name}: {v:?} is not a number")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A hand-written model: tree 0 splits feature 0 (numerical, NaN missing,
    // default left) at 1.5; tree 1 splits feature 1 on categories {1, 33}.
    const MODEL: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=binary sigmoid:1
feature_names=a b

Tree=0
num_leaves=2
num_cat=0
split_feature=0
threshold=1.5
decision_type=10
left_child=-1
right_child=-2
leaf_value=0.25 -0.5
shrinkage=1

Tree=1
num_leaves=2
num_cat=1
split_feature=1
threshold=0
decision_type=1
left_child=-1
right_child=-2
leaf_value=1 2
cat_boundaries=0 2
cat_threshold=2 2
is_linear=0
shrinkage=0.1

end of trees
";

    #[test]
    fn follows_lightgbm_decisions() {
        let b = Booster::parse(MODEL).unwrap();
        assert_eq!((b.num_features(), b.num_trees()), (2, 2));
        assert_eq!(b.raw_score(&[1.0, 1.0]), 0.25 + 1.0);
        assert_eq!(b.raw_score(&[1.5, 33.0]), 0.25 + 1.0);
        assert_eq!(b.raw_score(&[2.0, 2.0]), -0.5 + 2.0);
        // NaN: default left on the numerical split, right on the categorical one.
        assert_eq!(b.raw_score(&[f64::NAN, f64::NAN]), 0.25 + 2.0);
        // Negative and out-of-bitset categories go right; 1.9 truncates to 1.
        assert_eq!(b.raw_score(&[0.0, -1.0]), 0.25 + 2.0);
        assert_eq!(b.raw_score(&[0.0, 64.0]), 0.25 + 2.0);
        assert_eq!(b.raw_score(&[0.0, 1.9]), 0.25 + 1.0);
        assert_eq!(b.probability(0.0), Some(0.5));
    }

    #[test]
    fn refuses_what_it_cannot_evaluate() {
        let err = |text: &str| Booster::parse(text).unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert!(err("{\"json\": 1}").contains("not a LightGBM text model"));
        assert!(err(&MODEL.replace("num_class=1", "num_class=3")).contains("num_class=3"));
        assert!(err(&MODEL.replace("is_linear=0", "is_linear=1")).contains("tree 1: linear trees"));
        assert!(
            err(&MODEL.replace(
                "left_child=-1\nright_child=-2\nleaf_value=0.25",
                "left_child=-7\nright_child=-2\nleaf_value=0.25"
            ))
            .contains("tree 0: node 0")
        );
        assert!(err(&MODEL.replace("threshold=1.5", "threshold=x")).contains("threshold: \"x\""));
    }

    // Every missing-value rule: feature 0 is numerical with missing type
    // NaN (default right, then default left), feature 1 numerical with
    // missing type zero (default left, then right), feature 2 numerical with
    // none (thresholds below, at and above 0), feature 3 categorical with a
    // two-word bitset and a one-word one.
    const RULES: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
max_feature_idx=3
objective=regression

Tree=0
num_leaves=5
num_cat=0
split_feature=0 1 2 0
threshold=0.5 -2 -0.25 7
decision_type=8 6 0 10
left_child=1 2 -1 -3
right_child=3 -2 -4 -5
leaf_value=1 2 4 8 16
shrinkage=1

Tree=1
num_leaves=4
num_cat=2
split_feature=3 1 3
threshold=0 1e-30 1
decision_type=1 4 9
left_child=1 -1 -3
right_child=2 -2 -4
leaf_value=0.125 0.25 0.5 0.75
cat_boundaries=0 2 3
cat_threshold=5 2147483649 4
shrinkage=1

Tree=2
num_leaves=3
num_cat=0
split_feature=2 2
threshold=0 1.5
decision_type=2 2
left_child=-1 -2
right_child=1 -3
leaf_value=0.001 0.002 0.003
shrinkage=1

end of trees
";

    /// A small deterministic generator (xorshift64*), for test rows.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A value that probes the rules: NaN, zeros, values near zero and
        /// near the thresholds, fractions, negatives, large numbers.
        fn value(&mut self, around: &[f64]) -> f64 {
            let pick = self.next() % 100;
            let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            match pick {
                0..=9 => f64::NAN,
                10..=14 => 0.0,
                15..=17 => -0.0,
                18..=22 => (r - 0.5) * 4e-35,
                23..=26 => f64::INFINITY * if r < 0.5 { 1.0 } else { -1.0 },
                27..=29 => (r - 0.5) * 1e12,
                30..=59 => {
                    let t = around[(self.next() % around.len() as u64) as usize];
                    // The threshold itself, or one ulp either side.
                    match self.next() % 3 {
                        0 => t,
                        1 => f64::from_bits(t.to_bits().wrapping_add(1)),
                        _ => f64::from_bits(t.to_bits().wrapping_sub(1)),
                    }
                }
                _ => (r - 0.2) * 80.0,
            }
        }
    }

    fn assert_walks_agree(booster: &Booster, around: &[f64], rows: usize) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..rows {
            let row: Vec<f64> = (0..booster.num_features())
                .map(|_| rng.value(around))
                .collect();
            let (fast, plain) = (booster.raw_score(&row), booster.plain_raw_score(&row));
            assert_eq!(fast.to_bits(), plain.to_bits(), "row {row:?}");
        }
    }

    #[test]
    fn the_flattened_walk_follows_every_missing_value_rule() {
        let b = Booster::parse(RULES).unwrap();
        let around = [
            0.5, -2.0, -0.25, 7.0, 1e-30, 0.0, 1.5, 1.0, 31.0, 32.0, 33.0, 2.0,
        ];
        assert_walks_agree(&b, &around, 200_000);
        // Some rows worked by hand. NaN goes right at node 0 (missing type
        // NaN, default right), left at node 3 (default left).
        assert_eq!(b.raw_score(&[f64::NAN, 5.0, -1.0, 0.0]), 4.0 + 0.25 + 0.001);
        // Near zero goes to the default side only where the missing type is
        // zero; category 33 is in neither bitset.
        assert_eq!(b.raw_score(&[0.0, 1e-36, 0.0, 33.0]), 8.0 + 0.75 + 0.001);
        // NaN is 0 where the missing type is zero or none.
        assert_eq!(
            b.raw_score(&[0.0, f64::NAN, f64::NAN, 1.0]),
            8.0 + 0.75 + 0.001
        );
        assert_eq!(b.raw_score(&[9.0, 0.0, 2.0, 2.0]), 16.0 + 0.25 + 0.003);
        // Category 32 is bit 0 of the second word; -0.5 truncates to
        // category 0, -1 is negative and goes right.
        assert_eq!(b.raw_score(&[0.0, 5.0, -1.0, 32.0]), 2.0 + 0.25 + 0.001);
        assert_eq!(b.raw_score(&[0.0, 5.0, -1.0, -0.5]), 2.0 + 0.25 + 0.001);
        assert_eq!(b.raw_score(&[0.0, 5.0, -1.0, -1.0]), 2.0 + 0.75 + 0.001);
    }

    #[test]
    fn the_flattened_walk_scores_the_committed_models_as_lightgbm_does() {
        for text in [
            include_str!("../../model/flight-delay-v1.json"),
            include_str!("../../model/flight-delay-v2.json"),
        ] {
            let artifact: serde_json::Value = serde_json::from_str(text).unwrap();
            let b = Booster::parse(artifact["lightgbm"].as_str().unwrap()).unwrap();
            let around: Vec<f64> = b
                .trees
                .iter()
                .flat_map(|t| &t.nodes)
                .map(|n| n.threshold)
                .collect();
            assert_walks_agree(&b, &around, 20_000);
        }
    }

    #[test]
    fn refuses_splits_that_do_not_form_a_tree() {
        let cycle = MODEL.replace(
            "num_leaves=2\nnum_cat=0\nsplit_feature=0\nthreshold=1.5\ndecision_type=10\nleft_child=-1\nright_child=-2\nleaf_value=0.25 -0.5",
            "num_leaves=3\nnum_cat=0\nsplit_feature=0 0\nthreshold=1.5 2\ndecision_type=10 10\nleft_child=1 0\nright_child=-2 -3\nleaf_value=0.25 -0.5 1",
        );
        let err = Booster::parse(&cycle).unwrap_err().to_string();
        assert!(err.contains("tree 0: node 0 is reached twice"), "{err}");
    }

    #[test]
    fn refuses_a_model_whose_masks_would_not_fit() {
        // 40 categorical splits on one bitset of 2^21 words: each split's
        // mask covers 2^26 categories, 1 Mi words, 40 Mi words in all.
        let words = 1usize << 21;
        let splits = 40;
        let tree = format!(
            "num_leaves={leaves}\nnum_cat=1\nsplit_feature={features}\nthreshold={thresholds}\ndecision_type={decisions}\nleft_child={lefts}\nright_child={rights}\nleaf_value={values}\ncat_boundaries=0 {words}\ncat_threshold={bits}\nshrinkage=1\n",
            leaves = splits + 1,
            features = vec!["1"; splits].join(" "),
            thresholds = vec!["0"; splits].join(" "),
            decisions = vec!["1"; splits].join(" "),
            lefts = (0..splits)
                .map(|i| (!(i as i32)).to_string())
                .collect::<Vec<_>>()
                .join(" "),
            rights = (1..=splits)
                .map(|i| if i < splits {
                    i.to_string()
                } else {
                    (!(splits as i32)).to_string()
                })
                .collect::<Vec<_>>()
                .join(" "),
            values = vec!["0.5"; splits + 1].join(" "),
            bits = vec!["1"; words].join(" "),
        );
        let text = format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nmax_feature_idx=1\nobjective=regression\n\nTree=0\n{tree}\nend of trees\n"
        );
        let err = Booster::parse(&text).unwrap_err().to_string();
        assert!(err.contains("MiB of masks"), "{err}");
        assert!(err.contains("too many thresholds or categories"), "{err}");
    }
}
