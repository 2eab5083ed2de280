//! Topic names of the MQTT contract (docs/mqtt.md).

/// `{prefix}/{site}/{gateway}` plus the leaf topics.
#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

/// The command name the agent's own replies are published under (`{root}/cmd/response`).
/// They match the `cmd/+` subscription too, so they come back to us and must not be taken
/// for commands (MQTT 3.1.1 has no "no local" subscription option).
pub const RESPONSE: &str = "response";

impl Topics {
    pub fn new(root: String) -> Self {
        Self { root }
    }

    /// Retained presence: `online` / `offline` (the Will).
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }

    pub fn telemetry(&self, device: &str) -> String {
        format!("{}/telemetry/{device}", self.root)
    }

    pub fn events(&self) -> String {
        format!("{}/events", self.root)
    }

    /// The inbound command filter: `{root}/cmd/+`.
    pub fn commands(&self) -> String {
        format!("{}/cmd/+", self.root)
    }

    /// `{root}/cmd/{name}` → `name`, for a publish that arrived on [`Topics::commands`].
    pub fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let name = topic.strip_prefix(self.root.as_str())?.strip_prefix("/cmd/")?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// A stored reply's topic: `{root}/{leaf}`, or `None` when `leaf` cannot be published
    /// (empty, wildcards, empty levels at its ends, NUL).
    pub fn reply(&self, leaf: &str) -> Option<String> {
        let usable = !leaf.is_empty() && !leaf.contains(['+', '#', '\0']) && !leaf.starts_with('/') && !leaf.ends_with('/');
        usable.then(|| format!("{}/{leaf}", self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_the_last_level_under_cmd() {
        let t = Topics::new("plant/site/gw".into());
        assert_eq!(t.commands(), "plant/site/gw/cmd/+");
        assert_eq!(t.command_name("plant/site/gw/cmd/write"), Some("write"));
        assert_eq!(t.command_name("plant/site/gw/cmd/"), None);
        assert_eq!(t.command_name("plant/site/gw/cmd/a/b"), None);
        assert_eq!(t.command_name("plant/site/gw2/cmd/write"), None);
        assert_eq!(t.command_name("plant/site/gw/events"), None);
    }

    #[test]
    fn reply_topics_are_under_the_root_and_never_wildcards() {
        let t = Topics::new("plant/site/gw".into());
        assert_eq!(t.reply("cmd/response").as_deref(), Some("plant/site/gw/cmd/response"));
        assert_eq!(t.reply("cmd/#"), None);
        assert_eq!(t.reply(""), None);
        assert_eq!(t.reply("/cmd"), None);
    }
}
