"""LAN discovery: boards announce themselves over mDNS/DNS-SD (``flowring agent``), the head lists them
(``flowring scan``) and drafts an inventory from them (``flowring init``)."""
