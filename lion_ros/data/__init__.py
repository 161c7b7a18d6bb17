"""Training / evaluation data: the `Sample` type, synthetic tabletop scenes and readers for
public datasets in their original layouts."""
from lion_ros.data.sample import Box, ListDataset, RegionTarget, Sample, SampleDataset

__all__ = ["Box", "ListDataset", "RegionTarget", "Sample", "SampleDataset"]
