//! `/etc/passwd` and `/etc/group` of the workload's root file system (no NSS: the init is
//! static and the rootfs may not even have a libc).

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group ID.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses passwd text; malformed lines and comments are skipped (as getpwent does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses group text; malformed lines and comments are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The user database of one root file system.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// passwd entries.
    pub passwd: Vec<PasswdEntry>,
    /// group entries.
    pub groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads `<root>/etc/passwd` and `<root>/etc/group`; missing files are empty.
    pub fn load(root: &std::path::Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        UserDb {
            passwd: parse_passwd(&read("etc/passwd")),
            groups: parse_group(&read("etc/group")),
        }
    }

    /// The entry for a login name.
    pub fn user_by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.name == name)
    }

    /// The first entry for a uid.
    pub fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.uid == uid)
    }

    /// The gid of a group name.
    pub fn group_by_name(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    /// Supplementary groups listing `user` as a member (what initgroups adds).
    pub fn supplementary_groups(&self, user: &str) -> Vec<u32> {
        self.groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == user))
            .map(|g| g.gid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\napp:x:1000:1000:App:/home/app:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\naudio:x:29:app\nbad:x:notanumber:app\n";

    #[test]
    fn lookups() {
        let db = UserDb {
            passwd: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        };
        assert_eq!(db.passwd.len(), 3);
        let app = db.user_by_name("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(db.user_by_uid(65534).unwrap().name, "nobody");
        assert_eq!(db.group_by_name("audio"), Some(29));
        assert_eq!(db.group_by_name("bad"), None);
        assert_eq!(db.supplementary_groups("app"), vec![10, 29]);
        assert!(db.user_by_name("missing").is_none());
    }

    #[test]
    fn load_from_a_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(UserDb::load(dir.path()).passwd.is_empty());
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let db = UserDb::load(dir.path());
        assert_eq!(db.user_by_name("root").unwrap().home, "/root");
        assert_eq!(db.groups.len(), 4);
    }
}
