"""Data pipelines (docs/design.md §6): readers of the real on-disk formats, the synthetic shapes dataset
written in those same formats, collation through the processor, resumable positions.

Modules (nothing is imported here, so ``import libra`` stays light):
  laion             LaionShards: img2dataset webdataset shards as a stream (ranks x workers, every shard
                    read before any again across epochs or resampled, shuffle buffer, samples_per_epoch
                    for equal steps, exact resume)
  coco_karpathy     KarpathyCaptions + karpathy_to_coco_ground_truth (list captions: docs/design.md B21)
  llava_instruct    LlavaInstructions: llava_v1_5_mix665k layout, lazy, text-only, several roots
  vqa               VQAv2Questions (also OK-VQA), TextVQAQuestions, VizWizQuestions, GQAQuestions
  synthetic         synthetic_dataset(cache_dir, **params) -> SyntheticLayout (generated once)
  synthetic_readers the readers above opened on one split of the synthetic dataset (for configs)
  shapes_scene      scenes of coloured shapes: sampling, drawing, captions, questions
  batching          ReaderCollator (collate_fn), DataBatch, ReaderState (positions + skip counts)
  samplers          ResumableSampler, LengthGroupedSampler for the map-style readers
  summary           summarize(...): counts, length histogram, sample grid PNG
  skips, images, tar_samples, json_records: bad-data markers, decoding, tar grouping, json storage
"""
