"""Reading and rendering medical images: format sniffing, one reader per format."""
