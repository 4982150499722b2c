"""Datasets: the scikit-learn digits and the embedded tasks derived from them."""
