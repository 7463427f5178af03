"""The strategy's way from document to quantized model: the document (document.py) is resolved against a model
(resolve.py), seen as one config per module (layout.py) within the search space (space.py), repaired (repair.py)
and kept servable (deploy.py), named by its canonical form (canonical.py), counted (bits.py), and applied
(calibration.py, apply.py); transfer.py carries one to a model of another depth."""
