"""Pictures for people: radiologist overlays of predicted and true boxes, classifier probabilities and heatmaps.

Import the drawing functions from their module (``from hybridcxr.viz.overlay import draw_overlay``); this
package imports nothing heavy on its own.
"""
