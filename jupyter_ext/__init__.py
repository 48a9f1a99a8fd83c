"""The notebook face of ExoFlow (magics, cell analysis, widgets): see issue 3."""
