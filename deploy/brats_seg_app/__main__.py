"""``python deploy/brats_seg_app -i INPUT_DIR -o OUTPUT_DIR -m MODEL`` (see app.py)."""

from app import BratsSegApp

if __name__ == "__main__":
    BratsSegApp().run()
