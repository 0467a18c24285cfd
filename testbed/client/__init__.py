"""Load generation: scenarios that issue requests and collect :class:`RequestRecord` s."""
