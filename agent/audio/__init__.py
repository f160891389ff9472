"""Audio sources, DSP and the voice-activity gate."""
