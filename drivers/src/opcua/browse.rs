//! Commissioning: walk a server's address space (hierarchical references) to a depth,
//! with each variable's data type and current value, and turn the variables into a
//! `[[devices.tags]]` config snippet.

use std::collections::HashSet;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, NodeClass, NodeId, ReadValueId, ReferenceTypeId, TimestampsToReturn,
    Variant,
};

use super::value::{type_name, variant_value};
use crate::config::is_valid_name;

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct BrowsedNode {
    pub depth: usize,
    pub node_id: NodeId,
    pub browse_name: String,
    pub class: NodeClass,
    /// For variables: the built-in type of the value read, and the value as text.
    pub data_type: Option<String>,
    pub value: Option<String>,
}

/// Walks from `start` down to `depth` levels, depth first in the server's order (each
/// node listed once, right after its parent), under `limit` per request.
pub async fn browse(session: &Session, start: NodeId, depth: usize, limit: Duration) -> Result<Vec<BrowsedNode>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([start.clone()]);
    let mut stack = level(session, &start, 1, &mut seen, limit).await?;
    stack.reverse();
    while let Some(node) = stack.pop() {
        if node.depth < depth {
            let mut children = level(session, &node.node_id, node.depth + 1, &mut seen, limit).await?;
            children.reverse();
            stack.extend(children);
        }
        out.push(node);
    }
    Ok(out)
}

/// The children of `node` not seen yet, described, at `depth`.
async fn level(
    session: &Session,
    node: &NodeId,
    depth: usize,
    seen: &mut HashSet<NodeId>,
    limit: Duration,
) -> Result<Vec<BrowsedNode>, String> {
    let mut found = Vec::new();
    for (id, name, class) in children_of(session, node, limit).await? {
        if seen.insert(id.clone()) {
            found.push(BrowsedNode { depth, node_id: id, browse_name: name, class, data_type: None, value: None });
        }
    }
    describe_variables(session, &mut found, limit).await?;
    Ok(found)
}

async fn children_of(session: &Session, node: &NodeId, limit: Duration) -> Result<Vec<(NodeId, String, NodeClass)>, String> {
    let request = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let mut results = tokio::time::timeout(limit, session.browse(&[request], 1000, None))
        .await
        .map_err(|_| format!("no answer to Browse of {node} in time"))?
        .map_err(|e| format!("Browse of {node} failed: {e}"))?;
    let mut out = Vec::new();
    while let Some(result) = results.pop() {
        for r in result.references.unwrap_or_default() {
            out.push((r.node_id.node_id, r.browse_name.to_string(), r.node_class));
        }
        if result.continuation_point.is_null() {
            break;
        }
        results = tokio::time::timeout(limit, session.browse_next(false, &[result.continuation_point]))
            .await
            .map_err(|_| format!("no answer to BrowseNext of {node} in time"))?
            .map_err(|e| format!("BrowseNext of {node} failed: {e}"))?;
    }
    Ok(out)
}

async fn describe_variables(session: &Session, nodes: &mut [BrowsedNode], limit: Duration) -> Result<(), String> {
    let vars: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].class == NodeClass::Variable).collect();
    if vars.is_empty() {
        return Ok(());
    }
    let request: Vec<ReadValueId> = vars
        .iter()
        .map(|&i| ReadValueId { node_id: nodes[i].node_id.clone(), attribute_id: AttributeId::Value as u32, ..Default::default() })
        .collect();
    let values = tokio::time::timeout(limit, session.read(&request, TimestampsToReturn::Neither, 0.0))
        .await
        .map_err(|_| "no answer to Read in time".to_string())?
        .map_err(|e| format!("Read failed: {e}"))?;
    for (&i, dv) in vars.iter().zip(values) {
        let v = dv.value.unwrap_or(Variant::Empty);
        nodes[i].data_type = Some(type_name(&v).to_string());
        nodes[i].value = Some(match variant_value(&v) {
            Ok(Some(x)) => serde_json::to_string(&x).unwrap_or_default(),
            Ok(None) => format!("(no value: {})", dv.status.map(|s| s.to_string()).unwrap_or_default()),
            Err(e) => format!("({e})"),
        });
    }
    Ok(())
}

/// The tree as text, one node a line, indented by depth.
pub fn render_tree(nodes: &[BrowsedNode]) -> String {
    let mut out = String::new();
    for n in nodes {
        let indent = "  ".repeat(n.depth.saturating_sub(1));
        let class = format!("{:?}", n.class);
        match (&n.data_type, &n.value) {
            (Some(t), Some(v)) => out.push_str(&format!("{indent}{} [{class}] {}  {t} = {v}\n", n.browse_name, n.node_id)),
            _ => out.push_str(&format!("{indent}{} [{class}] {}\n", n.browse_name, n.node_id)),
        }
    }
    out
}

/// A `[[devices.tags]]` entry for every variable with a scalar value, named after its
/// browse name (made a valid tag name, unique).
pub fn config_snippet(nodes: &[BrowsedNode]) -> String {
    let mut out = String::new();
    let mut names = HashSet::new();
    for n in nodes.iter().filter(|n| n.class == NodeClass::Variable) {
        if matches!(n.data_type.as_deref(), None | Some("Array" | "ExtensionObject" | "Empty")) {
            continue;
        }
        let base = tag_name(&n.browse_name);
        let mut name = base.clone();
        let mut k = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        out.push_str(&format!(
            "[[devices.tags]]\nname = \"{name}\"\nnode_id = \"{}\"\n# {} = {}\n\n",
            n.node_id,
            n.data_type.as_deref().unwrap_or(""),
            n.value.as_deref().unwrap_or("").replace('\n', " ")
        ));
    }
    out
}

/// `2:Line 1.Speed` → `line_1_speed`.
fn tag_name(browse_name: &str) -> String {
    let bare = browse_name
        .split_once(':')
        .map_or(browse_name, |(ns, rest)| if ns.chars().all(|c| c.is_ascii_digit()) { rest } else { browse_name });
    let mut s: String = bare.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '_' }).collect();
    s.truncate(64);
    if is_valid_name(&s) {
        s
    } else {
        "tag".into()
    }
}

/// The Objects folder, where browsing starts by default.
pub fn objects_folder() -> NodeId {
    NodeId::objects_folder_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browse_names_become_valid_tag_names() {
        assert_eq!(tag_name("2:Line 1.Speed"), "line_1_speed");
        assert_eq!(tag_name("Temp"), "temp");
        assert_eq!(tag_name(""), "tag");
    }

    #[test]
    fn the_snippet_lists_scalar_variables_once_each() {
        let node = |name: &str, class, t: Option<&str>| BrowsedNode {
            depth: 1,
            node_id: NodeId::new(2, name),
            browse_name: format!("2:{name}"),
            class,
            data_type: t.map(Into::into),
            value: t.map(|_| "1".into()),
        };
        let s = config_snippet(&[
            node("Speed", NodeClass::Variable, Some("Double")),
            node("Folder", NodeClass::Object, None),
            node("Arr", NodeClass::Variable, Some("Array")),
        ]);
        assert!(s.contains("name = \"speed\"\nnode_id = \"ns=2;s=Speed\""), "{s}");
        assert!(!s.contains("Folder") && !s.contains("Arr"), "{s}");
    }
}
