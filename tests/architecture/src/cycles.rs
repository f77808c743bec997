//! Import circles between sibling modules. A reference from a file in module `a::b::c` to
//! module `a::d::e` is an edge between the siblings `a::b` and `a::d` (the children of the
//! modules' common ancestor that hold each end); a reference to an ancestor or descendant
//! (a parent's helpers, a child's items) is no edge. Each group of siblings that reach each
//! other (a strongly connected component) is one circle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::modules::{ModulePath, display_module};

/// Where an import comes from: `cli/src/commands/machines.rs:12`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One module naming another.
#[derive(Debug, Clone)]
pub struct Reference {
    pub from: ModulePath,
    pub to: ModulePath,
    pub at: Location,
    /// The path as written, for the report.
    pub text: String,
}

/// One circle: the sibling modules in it, one way round it, and every import inside it
/// (any of which may be the one to move).
#[derive(Debug)]
pub struct Circle {
    pub modules: Vec<ModulePath>,
    /// Each step of one way round, with the first reference that makes it.
    pub round: Vec<(ModulePath, ModulePath, Reference)>,
    /// Every edge between the circle's modules, with all its references.
    pub edges: BTreeMap<(ModulePath, ModulePath), Vec<Reference>>,
}

impl std::fmt::Display for Circle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.modules.iter().map(|m| display_module(m)).collect();
        writeln!(f, "import circle between {}:", names.join(", "))?;
        for (from, to, reference) in &self.round {
            writeln!(
                f,
                "    {} -> {}   at {} ({})",
                display_module(from),
                display_module(to),
                reference.at,
                reference.text
            )?;
        }
        writeln!(f, "  every import inside the circle:")?;
        for ((from, to), references) in &self.edges {
            let mut at: Vec<&Location> = references.iter().map(|r| &r.at).collect();
            at.sort();
            at.dedup();
            let at: Vec<String> = at.iter().map(ToString::to_string).collect();
            writeln!(f, "    {} -> {}: {}", display_module(from), display_module(to), at.join(", "))?;
        }
        Ok(())
    }
}

/// The circles among `references`, in a stable order.
pub fn find_circles(references: &[Reference]) -> Vec<Circle> {
    // Sibling edges, grouped by the parent whose children they join.
    let mut by_parent: BTreeMap<ModulePath, BTreeMap<(ModulePath, ModulePath), Vec<Reference>>> =
        BTreeMap::new();
    for reference in references {
        let Some((from, to)) = siblings(&reference.from, &reference.to) else { continue };
        let parent = from[..from.len() - 1].to_vec();
        by_parent.entry(parent).or_default().entry((from, to)).or_default().push(reference.clone());
    }
    let mut circles = Vec::new();
    for edges in by_parent.values() {
        for component in strongly_connected(edges.keys()) {
            let members: BTreeSet<&ModulePath> = component.iter().collect();
            let inside: BTreeMap<(ModulePath, ModulePath), Vec<Reference>> = edges
                .iter()
                .filter(|((from, to), _)| members.contains(from) && members.contains(to))
                .map(|(edge, references)| (edge.clone(), references.clone()))
                .collect();
            let round = shortest_round(&component[0], &inside);
            circles.push(Circle { modules: component, round, edges: inside });
        }
    }
    circles
}

/// The children of the common ancestor that hold `from` and `to`; None when one holds the
/// other (or they are the same module).
fn siblings(from: &[String], to: &[String]) -> Option<(ModulePath, ModulePath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// Tarjan's algorithm; returns only components of two or more modules, each sorted.
fn strongly_connected<'e>(edges: impl Iterator<Item = &'e (ModulePath, ModulePath)>) -> Vec<Vec<ModulePath>> {
    let mut next: BTreeMap<&ModulePath, Vec<&ModulePath>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
        next.entry(to).or_default();
    }
    struct State<'g> {
        next: &'g BTreeMap<&'g ModulePath, Vec<&'g ModulePath>>,
        index: BTreeMap<&'g ModulePath, usize>,
        low: BTreeMap<&'g ModulePath, usize>,
        stack: Vec<&'g ModulePath>,
        on_stack: BTreeSet<&'g ModulePath>,
        components: Vec<Vec<ModulePath>>,
    }
    fn visit<'g>(state: &mut State<'g>, node: &'g ModulePath) {
        let index = state.index.len();
        state.index.insert(node, index);
        state.low.insert(node, index);
        state.stack.push(node);
        state.on_stack.insert(node);
        let next = state.next;
        for &successor in next.get(node).map(Vec::as_slice).unwrap_or_default() {
            if !state.index.contains_key(successor) {
                visit(state, successor);
                let low = state.low[node].min(state.low[successor]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(successor) {
                let low = state.low[node].min(state.index[successor]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.components.push(component);
            }
        }
    }
    let mut state = State {
        next: &next,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in next.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.components.sort();
    state.components
}

/// The shortest way from `start` back to itself along `edges` (breadth first).
fn shortest_round(
    start: &ModulePath,
    edges: &BTreeMap<(ModulePath, ModulePath), Vec<Reference>>,
) -> Vec<(ModulePath, ModulePath, Reference)> {
    let mut came_from: BTreeMap<&ModulePath, &ModulePath> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for (from, to) in edges.keys().filter(|(from, _)| from == node) {
            if to == start {
                let mut steps = vec![(from.clone(), to.clone())];
                let mut at = from;
                while at != start {
                    let Some(&previous) = came_from.get(at) else { break };
                    steps.push((previous.clone(), at.clone()));
                    at = previous;
                }
                steps.reverse();
                return steps
                    .into_iter()
                    .filter_map(|(from, to)| {
                        let reference = edges.get(&(from.clone(), to.clone()))?.first()?.clone();
                        Some((from, to, reference))
                    })
                    .collect();
            }
            if to != start && !came_from.contains_key(to) {
                came_from.insert(to, from);
                queue.push_back(to);
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(from: &str, to: &str, line: usize) -> Reference {
        let path = |text: &str| -> ModulePath { text.split("::").map(str::to_owned).collect() };
        Reference {
            from: path(from),
            to: path(to),
            at: Location { file: format!("{}.rs", from.replace("::", "/")), line },
            text: format!("crate::{to}"),
        }
    }

    fn names(circle: &Circle) -> Vec<String> {
        circle.modules.iter().map(|m| display_module(m)).collect()
    }

    #[test]
    fn a_two_module_circle_is_found_with_where_each_import_is() {
        let circles = find_circles(&[reference("executor", "link", 3), reference("link", "executor", 9)]);
        assert_eq!(circles.len(), 1);
        assert_eq!(names(&circles[0]), ["executor", "link"]);
        let text = circles[0].to_string();
        assert!(text.contains("executor -> link   at executor.rs:3"), "{text}");
        assert!(text.contains("link -> executor   at link.rs:9"), "{text}");
    }

    #[test]
    fn a_three_module_circle_is_one_circle_and_the_way_round_is_closed() {
        let circles = find_circles(&[
            reference("commands::machines", "commands::convergence", 1),
            reference("commands::convergence", "commands::environments", 2),
            reference("commands::environments", "commands::machines", 3),
            reference("commands::machines", "format", 4),
        ]);
        assert_eq!(circles.len(), 1);
        assert_eq!(
            names(&circles[0]),
            ["commands::convergence", "commands::environments", "commands::machines"]
        );
        let round = &circles[0].round;
        assert_eq!(round.len(), 3);
        assert_eq!(round.first().unwrap().0, round.last().unwrap().1);
    }

    #[test]
    fn submodules_count_for_the_siblings_that_hold_them() {
        // resolve::plan -> lock and lock -> resolve::catalog make lock <-> resolve.
        let circles =
            find_circles(&[reference("resolve::plan", "lock", 1), reference("lock", "resolve::catalog", 2)]);
        assert_eq!(circles.len(), 1);
        assert_eq!(names(&circles[0]), ["lock", "resolve"]);
    }

    #[test]
    fn one_way_imports_parents_and_children_are_no_circle() {
        let circles = find_circles(&[
            reference("a", "b", 1),
            reference("b", "c", 2),
            reference("a", "c", 3),
            reference("commands::machines", "commands", 4),
            reference("commands", "commands::machines", 5),
            reference("a::x", "a::y", 6),
        ]);
        assert!(circles.is_empty(), "{circles:?}");
    }

    #[test]
    fn separate_circles_are_reported_separately() {
        let circles = find_circles(&[
            reference("a", "b", 1),
            reference("b", "a", 2),
            reference("c", "d", 3),
            reference("d", "c", 4),
            reference("commands::x", "commands::y", 5),
            reference("commands::y", "commands::x", 6),
        ]);
        let all: Vec<Vec<String>> = circles.iter().map(names).collect();
        assert_eq!(all, [vec!["a", "b"], vec!["c", "d"], vec!["commands::x", "commands::y"]]);
    }
}
