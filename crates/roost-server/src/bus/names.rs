//! The names of one deployment's channels and keys in Redis.

use std::sync::Arc;

use roost_proto::{DeviceId, UserId};

/// Every name starts `roost:<deployment>:`, the deployment being the random id its database got
/// when it was created: instances that share a database find each other, and deployments that
/// share one Redis never mix.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: Arc<str>,
}

/// What a channel this instance listens on carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    /// Cache invalidations, from every instance.
    Caches,
    /// Confirmations of this instance's invalidations.
    Confirmations,
    /// Events for a device held here.
    Device(DeviceId),
}

impl Names {
    pub(super) fn new(deployment: &str) -> Self {
        Self { prefix: format!("roost:{deployment}:").into() }
    }

    /// The channel every instance listens on for cache invalidations.
    pub(super) fn caches(&self) -> String {
        format!("{}caches", self.prefix)
    }

    /// The channel on which instance `origin` receives confirmations of its invalidations.
    pub(super) fn confirmations(&self, origin: u64) -> String {
        format!("{}ack:{origin}", self.prefix)
    }

    /// A device's channel.
    pub(super) fn device(&self, device: &DeviceId) -> String {
        format!("{}dev:{device}", self.prefix)
    }

    /// The sorted set of a user's seats.
    pub(super) fn seats(&self, user: &UserId) -> String {
        format!("{}seats:{user}", self.prefix)
    }

    /// A device's wake-up claim (push notifications).
    pub(super) fn wake(&self, device: &DeviceId) -> String {
        format!("{}wake:{device}", self.prefix)
    }

    /// A rate limit's bucket.
    pub(super) fn bucket(&self, bucket: &str) -> String {
        format!("{}limit:{bucket}", self.prefix)
    }

    /// What `channel` carries, if it is one of this deployment's.
    pub(super) fn channel(&self, channel: &str) -> Option<Channel> {
        let name = channel.strip_prefix(&*self.prefix)?;
        if name == "caches" {
            Some(Channel::Caches)
        } else if name.starts_with("ack:") {
            Some(Channel::Confirmations)
        } else {
            name.strip_prefix("dev:")?.parse().ok().map(Channel::Device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_the_deployments_own_and_channels_read_back() {
        let names = Names::new("d1");
        let device = DeviceId::from_bytes([3; 32]);
        assert_eq!(names.caches(), "roost:d1:caches");
        assert_eq!(names.confirmations(9), "roost:d1:ack:9");
        assert_eq!(names.bucket("sends:x"), "roost:d1:limit:sends:x");
        assert!(names.seats(&UserId::from_bytes([4; 32])).starts_with("roost:d1:seats:"));
        assert_eq!(names.channel(&names.caches()), Some(Channel::Caches));
        assert_eq!(names.channel(&names.confirmations(9)), Some(Channel::Confirmations));
        assert_eq!(names.channel(&names.device(&device)), Some(Channel::Device(device)));
        assert_eq!(names.channel(&Names::new("d2").device(&device)), None, "another deployment's");
        assert_eq!(names.channel("roost:d1:dev:not-a-device"), None);
    }
}
