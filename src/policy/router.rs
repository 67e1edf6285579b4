//! A segment trie per method: matching walks the path once, preferring literal segments
//! and backtracking to a parameter, so its cost follows the path's depth, not the number
//! of routes.

use super::Segment;

pub const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Default)]
pub(super) struct Router {
    methods: Vec<(&'static str, Vec<Node>)>,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by text: a binary search of a node's few literals costs less than hashing
    /// every segment of every path with SipHash.
    literals: Vec<(Box<str>, usize)>,
    param: Option<usize>,
    route: Option<usize>,
}

impl Node {
    fn literal(&self, text: &str) -> Option<usize> {
        let at = self.literals.binary_search_by(|(literal, _)| (**literal).cmp(text)).ok()?;
        Some(self.literals[at].1)
    }
}

/// The segments of a matched path, borrowed from it, without allocating.
pub(super) struct Segments<'p> {
    items: [&'p str; MAX_SEGMENTS],
    len: usize,
}

impl<'p> Segments<'p> {
    pub fn get(&self, index: usize) -> Option<&&'p str> {
        self.items[..self.len].get(index)
    }
}

impl Router {
    /// Adds a route; on a clash returns the index of the route already there.
    pub fn insert(&mut self, method: &'static str, segments: &[Segment], route: usize) -> Result<(), usize> {
        let nodes = match self.methods.iter_mut().position(|(m, _)| *m == method) {
            Some(i) => &mut self.methods[i].1,
            None => {
                self.methods.push((method, vec![Node::default()]));
                &mut self.methods.last_mut().expect("just pushed").1
            }
        };
        let mut at = 0;
        for segment in segments {
            let next = match segment {
                Segment::Literal(text) => nodes[at].literal(text),
                Segment::Param(_) => nodes[at].param,
            };
            at = match next {
                Some(next) => next,
                None => {
                    nodes.push(Node::default());
                    let new = nodes.len() - 1;
                    match segment {
                        Segment::Literal(text) => {
                            let literals = &mut nodes[at].literals;
                            let place = literals.partition_point(|(literal, _)| **literal < **text);
                            literals.insert(place, (text.as_str().into(), new));
                        }
                        Segment::Param(_) => nodes[at].param = Some(new),
                    }
                    new
                }
            };
        }
        match nodes[at].route {
            Some(existing) => Err(existing),
            None => {
                nodes[at].route = Some(route);
                Ok(())
            }
        }
    }

    pub fn find<'p>(&self, method: &str, path: &'p str) -> Option<(usize, Segments<'p>)> {
        let (_, nodes) = self.methods.iter().find(|(m, _)| m.eq_ignore_ascii_case(method))?;
        let rest = path.strip_prefix('/')?;
        // One trailing slash is tolerated: "/a/b/" is "/a/b".
        let rest = if rest.len() > 1 { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
        let mut segments = Segments { items: [""; MAX_SEGMENTS], len: 0 };
        if !rest.is_empty() {
            for segment in rest.split('/') {
                if segment.is_empty() || segments.len == MAX_SEGMENTS {
                    return None;
                }
                segments.items[segments.len] = segment;
                segments.len += 1;
            }
        }
        let route = walk(nodes, 0, &segments.items[..segments.len])?;
        Some((route, segments))
    }
}

fn walk(nodes: &[Node], at: usize, rest: &[&str]) -> Option<usize> {
    let node = &nodes[at];
    let Some((first, tail)) = rest.split_first() else {
        return node.route;
    };
    if let Some(next) = node.literal(first) {
        if let Some(found) = walk(nodes, next, tail) {
            return Some(found);
        }
    }
    walk(nodes, node.param?, tail)
}
